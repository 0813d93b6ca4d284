/* test_trainer.c - the contrastive trainer (train/train.h).
 *
 * A tiny medsem model (ViT 16 wide, 2 layers; image 8x8 / patch 4, volume
 * 4x8x8 / patch 2x4x4, so a volume's axial slice is an image input; BERT 16
 * wide; embedding 8) and a tiny in-memory dataset: four classes, each a
 * bright blob in its own place and a report naming it, as volumes and
 * radiographs.  Checks: training lowers the loss; a run stopped, written to
 * a checkpoint and resumed gives bit for bit the parameters and optimizer
 * state of an uninterrupted one (one thread, fixed seed); the saved model
 * directory loads and encodes as the trainer's model; a trainer started from
 * a saved model (trn_trainer_init_from) on a finer volume grid encodes as
 * the saved model did; slice selection
 * follows the attention; radiograph-volume pairs are drawn and pulled
 * together; the report tag parser, negations included.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "encoder/encoder.h"
#include "train/train.h"
#include "testutil.h"

static const char *const REPORTS[4] = {
    "Findings: The lungs are clear. No pleural effusion.\nImpression: Normal chest.",
    "Findings: A 12 mm nodule in the right upper lobe. No pneumothorax.",
    "Findings: Small left pleural effusion. No focal consolidation.",
    "Findings: The heart is enlarged. No nodule.\nImpression: Cardiomegaly.",
};

typedef struct fixture {
    char *dir;
    enc_tok *tok;
    char config[1024];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->dir = tu_mkdtemp();
    assert_non_null(f->dir);
    char **tokens;
    size_t ntok;
    assert_int_equal(trn_vocab_build((const char *const *)REPORTS, 4, 120, NULL, &tokens, &ntok),
                     ENC_OK);
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/vocab.txt", f->dir);
    assert_int_equal(trn_vocab_write(path, (const char *const *)tokens, ntok, err, sizeof err),
                     ENC_OK);
    trn_vocab_free(tokens, ntok);
    assert_int_equal(enc_tok_load(path, NULL, &f->tok, err, sizeof err), ENC_OK);
    snprintf(f->config, sizeof f->config,
             "{\"architecture\":\"medsem\",\"embed_dim\":8,\"logit_scale\":2.6592,"
             "\"vision\":{\"hidden_size\":16,\"num_layers\":2,\"num_heads\":2,\"mlp_dim\":24,"
             "\"layer_norm_eps\":1e-6,\"in_channels\":1,\"image_size\":[8,8],"
             "\"patch_size\":[4,4],\"volume_size\":[4,8,8],\"volume_patch_size\":[2,4,4]},"
             "\"text\":{\"vocab_size\":%zu,\"hidden_size\":16,\"num_layers\":2,\"num_heads\":2,"
             "\"intermediate_size\":24,\"max_position_embeddings\":32,\"type_vocab_size\":2,"
             "\"layer_norm_eps\":1e-12,\"max_len\":32}}",
             enc_tok_vocab_size(f->tok));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    enc_tok_free(f->tok);
    tu_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* Class c's inputs: a blob in quadrant c (and, for volumes, in the lower or
 * upper half along z), plus noise from r. */
static void make_image(int c, tu_rng *r, float *x)
{
    for (int y = 0; y < 8; y++)
        for (int xx = 0; xx < 8; xx++) {
            int q = (y >= 4) * 2 + (xx >= 4);
            x[y * 8 + xx] = (q == c ? 1.0f : 0.0f) + 0.1f * (float)tu_rng_normal(r);
        }
}

static void make_volume(int c, tu_rng *r, float *x)
{
    for (int z = 0; z < 4; z++)
        make_image(z >= 2 ? c : (c + 1) % 4, r, x + z * 64);
}

/* A trainer with 16 volumes and 16 radiographs; reserve: room made for
 * them first (trn_trainer_reserve), which must change nothing else. */
static trn_trainer *make_trainer_with(fixture *f, const trn_trainer_opts *o, int reserve)
{
    trn_trainer *t;
    char err[512];
    int rc = trn_trainer_new(f->config, f->tok, o, &t, err, sizeof err);
    if (rc)
        fail_msg("trn_trainer_new: %s", err);
    if (reserve) {
        assert_int_equal(trn_trainer_reserve(t, ENC_VOLUME, 16, err, sizeof err), 0);
        assert_int_equal(trn_trainer_reserve(t, ENC_IMAGE, 16, err, sizeof err), 0);
        assert_int_equal(trn_trainer_reserve(t, ENC_IMAGE, 3, err, sizeof err), 0); /* kept */
        assert_int_equal(trn_trainer_reserve(t, ENC_TEXT, 3, err, sizeof err), ENC_INVAL);
    }
    tu_rng r;
    tu_rng_seed(&r, 7);
    float x[256];
    for (int i = 0; i < 16; i++) {
        make_volume(i % 4, &r, x);
        assert_int_equal(trn_trainer_add(t, ENC_VOLUME, x, REPORTS[i % 4], err, sizeof err), 0);
        make_image(i % 4, &r, x);
        assert_int_equal(trn_trainer_add(t, ENC_IMAGE, x, REPORTS[i % 4], err, sizeof err), 0);
    }
    assert_int_equal(trn_trainer_items(t, ENC_VOLUME), 16);
    assert_int_equal(trn_trainer_items(t, ENC_IMAGE), 16);
    return t;
}

static trn_trainer *make_trainer(fixture *f, const trn_trainer_opts *o)
{
    return make_trainer_with(f, o, 0);
}

static trn_trainer_opts tiny_opts(void)
{
    trn_trainer_opts o = TRN_TRAINER_OPTS_INIT;
    o.seed = 5;
    o.threads = 1;
    o.batch_volumes = 6;
    o.batch_images = 6;
    o.slice_k = 2;
    o.soft_alpha = 0.5f;
    o.lr = 3e-3;
    o.warmup = 3;
    o.total_steps = 60;
    return o;
}

/* Runs 60 steps; *first and *last get the mean of pick (which also checks
 * each step) over steps 1-8 and 53-60. */
typedef double (*stat_pick)(const trn_trainer_stats *st, int step);
static void steps_60(trn_trainer *t, stat_pick pick, double *first, double *last)
{
    char err[512];
    *first = *last = 0;
    for (int s = 0; s < 60; s++) {
        trn_trainer_stats st;
        if (trn_trainer_step(t, &st, err, sizeof err))
            fail_msg("step %d: %s", s, err);
        double v = pick(&st, s);
        if (s < 8)
            *first += v / 8;
        if (s >= 52)
            *last += v / 8;
    }
}

static double loss_pick(const trn_trainer_stats *st, int step)
{
    (void)step;
    assert_int_equal(st->skipped, 0);
    assert_int_equal(st->samples, 6 + 6 + 12);
    assert_true(isfinite(st->loss));
    return st->loss;
}

static void test_loss_decreases(void **state)
{
    fixture *f = *state;
    trn_trainer_opts o = tiny_opts();
    trn_trainer *t = make_trainer(f, &o);
    double first, last;
    steps_60(t, loss_pick, &first, &last);
    printf("# mean loss of steps 1-8 %.4f, of steps 53-60 %.4f\n", first, last);
    assert_true(last < 0.8 * first);
    assert_int_equal(trn_trainer_steps(t), 60);
    assert_true(trn_trainer_step_flops(t) > 0);
    trn_trainer_free(t);
}

static double side_pick(const trn_trainer_stats *st, int step)
{
    assert_true(isfinite(st->side_loss) && st->side_loss > 0);
    assert_true(isfinite(st->tag_loss) && st->tag_loss > 0);
    if (step == 0)
        assert_true(fabs(st->side_loss - log(2.0)) < 0.2);
    return st->side_loss;
}

/* 60 steps with minimal-pair negatives (options o): the side loss starts
 * near log 2 and falls as the towers learn what tells a report from its
 * swapped twin. */
static void negatives_train(fixture *f, trn_trainer_opts o, const char *what)
{
    trn_trainer *t = make_trainer(f, &o);
    double first, last;
    steps_60(t, side_pick, &first, &last);
    printf("# %s loss: steps 1-8 %.4f, steps 53-60 %.4f\n", what, first, last);
    assert_true(last < 0.8 * first);
    trn_trainer_free(t);
}

/* The mirror-image negatives: two of the four reports name a side (and
 * are swapped), the others are left out.  The multi-label tag loss trains
 * beside it. */
static void test_side_negatives(void **state)
{
    trn_trainer_opts o = tiny_opts();
    o.side_weight = 1.0f;
    o.tag_weight = 1.0f;
    o.tag_bce = 1;
    negatives_train(*state, o, "side");
}

/* Lobe-swapped negatives: the nodule report's negative is the same nodule
 * in the right lower lobe, the effusion's the left one on the right.
 * Without side_weight the option is refused. */
static void test_lobe_negatives(void **state)
{
    fixture *f = *state;
    trn_trainer_opts o = tiny_opts();
    o.side_weight = 1.0f;
    o.lobe_rate = 1.0f;
    o.tag_weight = 1.0f;
    negatives_train(f, o, "lobe and side");
    trn_trainer *t;
    char err[512];
    o.side_weight = 0;
    assert_int_equal(trn_trainer_new(f->config, f->tok, &o, &t, err, sizeof err), ENC_INVAL);
    o.side_weight = 1.0f;
    o.lobe_rate = 1.5f;
    assert_int_equal(trn_trainer_new(f->config, f->tok, &o, &t, err, sizeof err), ENC_INVAL);
}

/* The visual tag head alone: volumes and radiographs learn their reports'
 * tags (the blob's quadrant tells the report), the report-tag head stays
 * off, and the loss falls well below where the untrained head starts
 * (0.79 to 0.47 in 60 steps at this learning rate). */
static double vis_tag_pick(const trn_trainer_stats *st, int step)
{
    (void)step;
    assert_int_equal(st->skipped, 0);
    assert_true(st->tag_loss == 0);
    assert_true(isfinite(st->vis_tag_loss) && st->vis_tag_loss > 0);
    return st->vis_tag_loss;
}

static void test_vis_tag_head(void **state)
{
    fixture *f = *state;
    trn_trainer_opts o = tiny_opts();
    o.vis_tag_weight = 1.0f;
    trn_trainer *t = make_trainer(f, &o);
    double first, last;
    steps_60(t, vis_tag_pick, &first, &last);
    printf("# visual tag loss: steps 1-8 %.4f, steps 53-60 %.4f\n", first, last);
    assert_true(last < 0.7 * first);
    trn_trainer_free(t);
    /* a negative weight is refused */
    char err[512];
    o.vis_tag_weight = -1.0f;
    assert_int_equal(trn_trainer_new(f->config, f->tok, &o, &t, err, sizeof err), ENC_INVAL);
}

/* Radiograph-volume pairs of one study (pair_weight): the pair's 1 - cos
 * falls as its two rows are pulled together, with hard targets (each pair's
 * two reports then share the target).  Pairs out of range, a radiograph
 * paired twice, a run with pair_weight but no pairs, and pairs after the
 * first step are refused. */
static double pair_pick(const trn_trainer_stats *st, int step)
{
    (void)step;
    assert_int_equal(st->skipped, 0);
    assert_true(isfinite(st->pair_loss) && st->pair_loss >= 0 && st->pair_loss <= 2);
    assert_true(isfinite(st->loss));
    return st->pair_loss;
}

static void test_pairs(void **state)
{
    fixture *f = *state;
    char err[512];
    trn_trainer_opts o = tiny_opts();
    o.soft_alpha = 0;
    o.pair_weight = 1.0f;
    trn_trainer *t = make_trainer(f, &o);
    assert_int_equal(trn_trainer_step(t, NULL, err, sizeof err), ENC_INVAL); /* no pairs */
    assert_non_null(strstr(err, "pair"));
    trn_trainer_free(t);

    t = make_trainer(f, &o);
    assert_int_equal(trn_trainer_pair(t, 16, 0, err, sizeof err), ENC_INVAL);
    assert_int_equal(trn_trainer_pair(t, 0, 16, err, sizeof err), ENC_INVAL);
    for (size_t i = 0; i < 16; i++) /* volume i and radiograph i show class i % 4 */
        assert_int_equal(trn_trainer_pair(t, i, i, err, sizeof err), ENC_OK);
    assert_int_equal(trn_trainer_pair(t, 3, 7, err, sizeof err), ENC_INVAL);
    assert_non_null(strstr(err, "paired already"));
    double first, last;
    steps_60(t, pair_pick, &first, &last);
    printf("# pair 1 - cos: steps 1-8 %.4f, steps 53-60 %.4f\n", first, last);
    assert_true(last < 0.5 * first);
    assert_int_equal(trn_trainer_pair(t, 0, 1, err, sizeof err), ENC_INVAL); /* started */
    trn_trainer_free(t);

    o.pair_weight = -1.0f;
    assert_int_equal(trn_trainer_new(f->config, f->tok, &o, &t, err, sizeof err), ENC_INVAL);
}

static void test_report_swap(void **state)
{
    (void)state;
    static const struct {
        const char *in, *side, *lobe;
    } cases[] = {
        {"A 12 mm nodule in the right upper lobe.", "A 12 mm nodule in the left upper lobe.",
         "A 12 mm nodule in the right lower lobe."},
        {"Mass in the Left Lower Lobe; no right effusion.",
         "Mass in the Right Lower Lobe; no left effusion.",
         "Mass in the Left Upper Lobe; no right effusion."},
        {"Consolidation in the right middle lobe.", "Consolidation in the left middle lobe.",
         "Consolidation in the right lower lobe."},
        /* whole words only; the case of each overlapping letter kept */
        {"Uppermost, leftover, bright. LEFT.", "Uppermost, leftover, bright. RIGHt.",
         "Uppermost, leftover, bright. LEFT."},
        {"", "", ""},
        {"No acute findings.", "No acute findings.", "No acute findings."},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *s = trn_report_swap(cases[i].in, TRN_SWAP_SIDE);
        char *l = trn_report_swap(cases[i].in, TRN_SWAP_LOBE);
        assert_non_null(s);
        assert_non_null(l);
        assert_string_equal(s, cases[i].side);
        assert_string_equal(l, cases[i].lobe);
        free(s);
        free(l);
    }
}

static void resume_exact(fixture *f, trn_trainer_opts o)
{
    char err[512], ck[600];
    snprintf(ck, sizeof ck, "%s/train.ckpt", f->dir);
    trn_trainer *a = make_trainer(f, &o), *b = make_trainer(f, &o);
    for (int s = 0; s < 8; s++)
        assert_int_equal(trn_trainer_step(a, NULL, err, sizeof err), 0);
    for (int s = 0; s < 4; s++)
        assert_int_equal(trn_trainer_step(b, NULL, err, sizeof err), 0);
    assert_int_equal(trn_trainer_ckpt_write(b, ck, err, sizeof err), 0);
    trn_trainer_free(b);
    trn_trainer *c = make_trainer(f, &o);
    assert_int_equal(trn_trainer_ckpt_read(c, ck, err, sizeof err), 0);
    assert_int_equal(trn_trainer_steps(c), 4);
    for (int s = 0; s < 4; s++)
        assert_int_equal(trn_trainer_step(c, NULL, err, sizeof err), 0);
    const trn_adamw *oa = trn_trainer_optimizer(a), *oc = trn_trainer_optimizer(c);
    size_t n = trn_adamw_count(oa);
    assert_int_equal(n, trn_adamw_count(oc));
    assert_int_equal(trn_adamw_steps(oa), trn_adamw_steps(oc));
    assert_memory_equal(trn_trainer_params(a), trn_trainer_params(c), n * sizeof(float));
    assert_memory_equal(trn_adamw_m(oa), trn_adamw_m(oc), n * sizeof(float));
    assert_memory_equal(trn_adamw_v(oa), trn_adamw_v(oc), n * sizeof(float));
    /* and the model's own weights follow the arena */
    enc_model *ma = trn_trainer_model(a), *mc = trn_trainer_model(c);
    for (size_t i = 0; i < enc_model_param_count(ma); i++) {
        enc_param pa, pc;
        enc_model_param(ma, i, &pa);
        enc_model_param(mc, i, &pc);
        assert_memory_equal(pa.data, pc.data, pa.count * sizeof(float));
    }
    /* a different seed gives a different run */
    trn_trainer_opts o2 = o;
    o2.seed = 6;
    trn_trainer *d = make_trainer(f, &o2);
    assert_int_equal(trn_trainer_step(d, NULL, err, sizeof err), 0);
    assert_true(memcmp(trn_trainer_params(a), trn_trainer_params(d), n * sizeof(float)) != 0);
    trn_trainer_free(a);
    trn_trainer_free(c);
    trn_trainer_free(d);
}

static void test_resume_exact(void **state)
{
    fixture *f = *state;
    resume_exact(f, tiny_opts());
    /* phrases draw from the same generator: a resumed run stays exact */
    trn_trainer_opts o = tiny_opts();
    o.phrase_rate = 0.5f;
    o.side_weight = 1.0f;
    o.tag_weight = 1.0f;
    resume_exact(f, o);
    /* and so do the lobe draws; the visual tag head's weights and moments
     * are in the checkpoint */
    o.lobe_rate = 0.5f;
    o.vis_tag_weight = 1.0f;
    resume_exact(f, o);
}

/* Every report replaced by a phrase made from it: the towers still learn,
 * with the side and tag terms beside it. */
static double phrase_pick(const trn_trainer_stats *st, int step)
{
    (void)step;
    assert_int_equal(st->skipped, 0);
    return st->clip_loss;
}

static void test_phrases_train(void **state)
{
    fixture *f = *state;
    trn_trainer_opts o = tiny_opts();
    o.phrase_rate = 1.0f;
    o.side_weight = 1.0f;
    o.tag_weight = 1.0f;
    trn_trainer *t = make_trainer(f, &o);
    char err[512];
    double first, last;
    steps_60(t, phrase_pick, &first, &last);
    printf("# phrases: contrastive loss of steps 1-8 %.4f, of steps 53-60 %.4f\n", first, last);
    assert_true(last < 0.8 * first);
    trn_trainer_free(t);
    o.phrase_rate = 1.5f;
    assert_int_equal(trn_trainer_new(f->config, f->tok, &o, &t, err, sizeof err), ENC_INVAL);
}

/* The saved directory loads with enc_model_load and encodes as the trainer. */
/* e [8] = m's embedding of one volume input. */
static void encode_volume_with(enc_model *m, const float *vol, float *e)
{
    char err[512];
    enc_state *st;
    assert_int_equal(enc_state_new(m, ENC_VOLUME, 1, NULL, &st, err, sizeof err), 0);
    assert_int_equal(enc_encode_volume(st, vol, 1, e), 0);
    enc_state_free(st);
}

static void test_save_loads(void **state)
{
    fixture *f = *state;
    trn_trainer_opts o = tiny_opts();
    trn_trainer *t = make_trainer(f, &o);
    char err[512];
    for (int s = 0; s < 3; s++)
        assert_int_equal(trn_trainer_step(t, NULL, err, sizeof err), 0);
    /* modality means of older weights in the folder: the save removes them */
    char *means = NULL;
    assert_true(asprintf(&means, "%s/%s", f->dir, ENC_MEANS_FILE) > 0);
    FILE *mf = fopen(means, "w");
    assert_non_null(mf);
    fputs("{\"model\": \"old\", \"dim\": 8}\n", mf);
    fclose(mf);
    assert_int_equal(trn_trainer_save(t, f->dir, err, sizeof err), 0);
    assert_int_equal(access(means, F_OK), -1);
    free(means);
    enc_model *m;
    enc_model_opts mo = {.nthreads = 1};
    int rc = enc_model_load(f->dir, &mo, &m, err, sizeof err);
    if (rc)
        fail_msg("enc_model_load: %s", err);
    const float *P = trn_trainer_params(t);
    const trn_adamw *opt = trn_trainer_optimizer(t);
    size_t np = enc_model_param_count(m);
    assert_float_equal(enc_model_logit_scale(m), P[trn_adamw_offset(opt, np)], 0);
    tu_rng r;
    tu_rng_seed(&r, 3);
    float vol[256], e1[8], e2[8];
    make_volume(2, &r, vol);
    encode_volume_with(m, vol, e1);
    encode_volume_with(trn_trainer_model(t), vol, e2);
    assert_memory_equal(e1, e2, sizeof e1);
    enc_model_free(m);
    trn_trainer_free(t);
}

/* The parameter called name of m. */
static const float *param_named(enc_model *m, const char *name, enc_param *out)
{
    for (size_t i = 0; i < enc_model_param_count(m); i++) {
        enc_model_param(m, i, out);
        if (!strcmp(out->name, name))
            return out->data;
    }
    fail_msg("no parameter %s", name);
    return NULL;
}

/* f->config with "from" replaced by "to" (which must occur once). */
static void config_with(const fixture *f, const char *from, const char *to, char *out, size_t cap)
{
    const char *at = strstr(f->config, from);
    assert_non_null(at);
    snprintf(out, cap, "%.*s%s%s", (int)(at - f->config), f->config, to, at + strlen(from));
}

static void test_init_from(void **state)
{
    fixture *f = *state;
    trn_trainer_opts o = tiny_opts();
    trn_trainer *a = make_trainer(f, &o);
    char err[512], cfg[1024];
    for (int s = 0; s < 3; s++)
        assert_int_equal(trn_trainer_step(a, NULL, err, sizeof err), 0);
    assert_int_equal(trn_trainer_save(a, f->dir, err, sizeof err), 0);
    enc_model *ma = trn_trainer_model(a);

    /* the same grid of tokens over a volume twice as finely sliced: a volume
     * whose slices are each repeated twice encodes as the original did */
    config_with(f, "\"volume_size\":[4,8,8],\"volume_patch_size\":[2,4,4]",
                "\"volume_size\":[8,8,8],\"volume_patch_size\":[4,4,4]", cfg, sizeof cfg);
    trn_trainer *b;
    assert_int_equal(trn_trainer_new(cfg, f->tok, &o, &b, err, sizeof err), 0);
    int rc = trn_trainer_init_from(b, f->dir, err, sizeof err);
    if (rc)
        fail_msg("trn_trainer_init_from: %s", err);
    tu_rng r;
    tu_rng_seed(&r, 3);
    float vol[256], fine[512], e1[8], e2[8];
    make_volume(1, &r, vol);
    for (int z = 0; z < 8; z++)
        memcpy(fine + z * 64, vol + (z / 2) * 64, 64 * sizeof *fine);
    encode_volume_with(ma, vol, e1);
    encode_volume_with(trn_trainer_model(b), fine, e2);
    for (int k = 0; k < 8; k++)
        assert_float_equal(e1[k], e2[k], 1e-5);
    /* the model's text tower and temperature are the saved ones */
    enc_param pa, pb;
    const float *wa = param_named(ma, "text.embeddings.word_embeddings.weight", &pa);
    const float *wb = param_named(trn_trainer_model(b), "text.embeddings.word_embeddings.weight",
                                  &pb);
    assert_memory_equal(wa, wb, pa.count * sizeof *wa);
    size_t np = enc_model_param_count(ma);
    assert_float_equal(trn_trainer_params(a)[trn_adamw_offset(trn_trainer_optimizer(a), np)],
                       trn_trainer_params(b)[trn_adamw_offset(trn_trainer_optimizer(b), np)], 0);
    trn_trainer_free(b);

    /* twice the z-token planes: the position embedding resampled along z */
    config_with(f, "\"volume_size\":[4,8,8]", "\"volume_size\":[8,8,8]", cfg, sizeof cfg);
    assert_int_equal(trn_trainer_new(cfg, f->tok, &o, &b, err, sizeof err), 0);
    assert_int_equal(trn_trainer_init_from(b, f->dir, err, sizeof err), 0);
    const float *pos_a = param_named(ma, "vision.pos3d", &pa);
    const float *pos_b = param_named(trn_trainer_model(b), "vision.pos3d", &pb);
    assert_int_equal(pa.shape[1], 1 + 2 * 4);
    assert_int_equal(pb.shape[1], 1 + 4 * 4);
    const int D = 16, gyx = 4;
    for (int n = 0; n < gyx * D; n++) {
        const float p0 = pos_a[D + n], p1 = pos_a[D + gyx * D + n];
        assert_float_equal(pos_b[D + n], p0, 0);
        assert_float_equal(pos_b[D + gyx * D + n], 0.75f * p0 + 0.25f * p1, 1e-6);
        assert_float_equal(pos_b[D + 2 * gyx * D + n], 0.25f * p0 + 0.75f * p1, 1e-6);
        assert_float_equal(pos_b[D + 3 * gyx * D + n], p1, 0);
    }
    assert_memory_equal(pos_a, pos_b, D * sizeof *pos_a); /* [CLS] */
    trn_trainer_free(b);

    /* a shape that does not fit is named, and nothing changes */
    config_with(f, "\"embed_dim\":8", "\"embed_dim\":12", cfg, sizeof cfg);
    assert_int_equal(trn_trainer_new(cfg, f->tok, &o, &b, err, sizeof err), 0);
    const trn_adamw *ob = trn_trainer_optimizer(b);
    size_t count = trn_adamw_count(ob);
    float *before = malloc(count * sizeof *before);
    assert_non_null(before);
    memcpy(before, trn_trainer_params(b), count * sizeof *before);
    assert_int_equal(trn_trainer_init_from(b, f->dir, err, sizeof err), ENC_SHAPE);
    assert_non_null(strstr(err, "model.safetensors"));
    assert_non_null(strstr(err, "proj.weight has shape [8, 16], the config needs [12, 16]"));
    assert_memory_equal(before, trn_trainer_params(b), count * sizeof *before);
    free(before);
    /* no such model */
    char missing[600];
    snprintf(missing, sizeof missing, "%s/none", f->dir);
    assert_int_not_equal(trn_trainer_init_from(b, missing, err, sizeof err), 0);
    assert_non_null(strstr(err, "none/model.safetensors"));
    trn_trainer_free(b);
    /* only before the first step */
    assert_int_equal(trn_trainer_init_from(a, f->dir, err, sizeof err), ENC_INVAL);
    trn_trainer_free(a);
}

/* Room made up front trains exactly as room grown item by item; none can
 * be made after a step. */
static void test_reserve(void **state)
{
    fixture *f = *state;
    char err[512];
    trn_trainer_opts o = tiny_opts();
    o.side_weight = 1.0f;
    o.phrase_rate = 0.5f;
    trn_trainer *a = make_trainer_with(f, &o, 0), *b = make_trainer_with(f, &o, 1);
    for (int s = 0; s < 2; s++) {
        assert_int_equal(trn_trainer_step(a, NULL, err, sizeof err), 0);
        assert_int_equal(trn_trainer_step(b, NULL, err, sizeof err), 0);
    }
    size_t n = trn_adamw_count(trn_trainer_optimizer(a));
    assert_memory_equal(trn_trainer_params(a), trn_trainer_params(b), n * sizeof(float));
    assert_int_equal(trn_trainer_reserve(b, ENC_VOLUME, 64, err, sizeof err), ENC_INVAL);
    assert_non_null(strstr(err, "after training started"));
    trn_trainer_free(a);
    trn_trainer_free(b);
}

static void test_trainer_refusals(void **state)
{
    fixture *f = *state;
    trn_trainer *t;
    char err[512];
    trn_trainer_opts o = tiny_opts();
    o.slice_k = 5; /* the volume has 4 slices */
    assert_int_equal(trn_trainer_new(f->config, f->tok, &o, &t, err, sizeof err), ENC_INVAL);
    assert_non_null(strstr(err, "slice"));
    o = tiny_opts();
    o.batch_volumes = 1;
    o.batch_images = 0;
    assert_int_equal(trn_trainer_new(f->config, f->tok, &o, &t, err, sizeof err), ENC_INVAL);
    /* a step needs items */
    o = tiny_opts();
    assert_int_equal(trn_trainer_new(f->config, f->tok, &o, &t, err, sizeof err), 0);
    assert_int_equal(trn_trainer_step(t, NULL, err, sizeof err), ENC_INVAL);
    trn_trainer_free(t);
}

static void test_slice_select(void **state)
{
    (void)state;
    /* 4 patch-depth groups of 2 x 2 patches, Pd = 3 (12 slices).  The
     * attention sits in group 2, then group 0 (spread thin over more
     * patches), then group 3. */
    float att[16] = {0};
    att[2 * 4 + 1] = 0.5f;
    att[0 * 4 + 0] = 0.1f, att[0 * 4 + 1] = 0.1f, att[0 * 4 + 3] = 0.1f;
    att[3 * 4 + 2] = 0.15f;
    att[1 * 4 + 3] = 0.05f;
    int grid[3] = {4, 2, 2}, s[8];
    trn_slice_select(att, grid, 3, 1, s);
    assert_int_equal(s[0], 7); /* group 2's centre slice: 2 * 3 + 1 */
    trn_slice_select(att, grid, 3, 3, s);
    assert_int_equal(s[0], 7);
    assert_int_equal(s[1], 1);  /* group 0 (0.3) */
    assert_int_equal(s[2], 10); /* group 3 (0.15) */
    /* more picks than groups: the next round takes the neighbours */
    trn_slice_select(att, grid, 3, 6, s);
    assert_int_equal(s[3], 4); /* group 1 */
    assert_int_equal(s[4], 6); /* group 2, centre - 1 */
    assert_int_equal(s[5], 0); /* group 0, centre - 1 */
    /* ties go to the lower group */
    float flat[16];
    for (int i = 0; i < 16; i++)
        flat[i] = 1.0f / 16;
    trn_slice_select(flat, grid, 3, 2, s);
    assert_int_equal(s[0], 1);
    assert_int_equal(s[1], 4);
}

static int tags_of(const char *text, int32_t *t) { return trn_report_tags(text, t, 32); }

static int has(const int32_t *t, int n, int32_t v)
{
    for (int i = 0; i < n; i++)
        if (t[i] == v)
            return 1;
    return 0;
}

/* Whether every tag of a is in b. */
static int subset(const int32_t *a, int na, const int32_t *b, int nb)
{
    for (int i = 0; i < na; i++)
        if (!has(b, nb, a[i]))
            return 0;
    return 1;
}

static void test_report_phrase(void **state)
{
    (void)state;
    const char *rep = "Technique: Axial CT of the chest without contrast.\n"
                      "Findings: No pneumothorax. Moderate left pleural effusion. A 9 mm nodule "
                      "in the right upper lobe. No focal consolidation.\n"
                      "Impression:\n1. Moderate left effusion.\n2. Right upper lobe nodule, 9 mm.";
    int32_t rt[32], pt[32];
    int nr = tags_of(rep, rt);
    char ph[256], again[256];
    int bare = 0, placed = 0, sentences = 0;
    for (uint64_t seed = 0; seed < 200; seed++) {
        size_t n = trn_report_phrase(rep, seed, ph, sizeof ph);
        assert_int_equal(n, strlen(ph));
        assert_true(n > 0);
        /* what the phrase says is what the report says, never a negated finding */
        int np = tags_of(ph, pt);
        if (!subset(pt, np, rt, nr))
            fail_msg("seed %llu: \"%s\" says more than the report", (unsigned long long)seed, ph);
        assert_false(has(pt, np, 0));
        assert_null(strstr(ph, "No "));
        assert_null(strstr(ph, "Findings"));
        assert_null(strstr(ph, "1."));
        /* deterministic in the seed */
        trn_report_phrase(rep, seed, again, sizeof again);
        assert_string_equal(ph, again);
        bare += !strcmp(ph, "Pleural effusion.") || !strcmp(ph, "Nodule.");
        placed += !strcmp(ph, "Left pleural effusion.") || !strcmp(ph, "Pleural effusion on the left.") ||
                  !strcmp(ph, "Nodule in the right upper lobe.") ||
                  !strcmp(ph, "Right upper lobe nodule.");
        sentences += strstr(ph, "Moderate left") != NULL || strstr(ph, "9 mm") != NULL;
    }
    printf("# phrases over 200 seeds: %d bare findings, %d with a place, %d from sentences\n", bare,
           placed, sentences);
    assert_true(bare > 10 && placed > 10 && sentences > 50);
    /* a normal report: one of its own sentences or a normal phrase */
    const char *normal = "Findings: The lungs are clear. No pleural effusion.\nImpression: Normal chest.";
    for (uint64_t seed = 0; seed < 50; seed++) {
        trn_report_phrase(normal, seed, ph, sizeof ph);
        int np = tags_of(ph, pt);
        assert_int_equal(np, 1);
        assert_int_equal(pt[0], 0);
    }
    /* a small buffer: cut at a sentence, always terminated */
    char tiny[24];
    for (uint64_t seed = 0; seed < 50; seed++) {
        size_t n = trn_report_phrase(rep, seed, tiny, sizeof tiny);
        assert_true(n < sizeof tiny);
        assert_int_equal(n, strlen(tiny));
    }
    size_t n = trn_report_phrase(NULL, 1, ph, sizeof ph);
    assert_int_equal(n, strlen(ph));
    n = trn_report_phrase("", 1, ph, sizeof ph);
    assert_int_equal(n, strlen(ph));
}

static void test_report_tags(void **state)
{
    (void)state;
    int32_t t[32];
    int n;
    /* tags: 1 nodule, 2 mass, 3 effusion, 4 pneumothorax, 5 consolidation,
     * 6 cardiomegaly, 7 emphysema; 8 + 16 f + loc (RUL 0 .. LLL 4, right 5,
     * left 6) */
    n = tags_of("The lungs are clear. No pleural effusion or pneumothorax.", t);
    assert_int_equal(n, 1);
    assert_int_equal(t[0], 0);
    n = tags_of("There is a 9 mm nodule in the right upper lobe.", t);
    assert_int_equal(n, 2);
    assert_int_equal(t[0], 1);
    assert_int_equal(t[1], 8 + 16 * 1 + 0);
    n = tags_of("No effusion on the left. Small right pleural effusion layering dependently.", t);
    assert_int_equal(n, 2);
    assert_true(has(t, n, 3) && has(t, n, 8 + 16 * 3 + 5));
    assert_false(has(t, n, 8 + 16 * 3 + 6));
    n = tags_of("Right pleural effusion without pneumothorax.", t);
    assert_true(has(t, n, 3) && !has(t, n, 4));
    n = tags_of("Negative for pneumothorax. Free of consolidation; absence of nodules.", t);
    assert_int_equal(n, 1);
    assert_int_equal(t[0], 0);
    n = tags_of("No nodule, but there is a mass in the left lower lobe measuring 4.2 cm.", t);
    assert_true(has(t, n, 2) && has(t, n, 8 + 16 * 2 + 4) && !has(t, n, 1));
    n = tags_of("The heart is not enlarged. Heart size is normal.", t);
    assert_int_equal(t[0], 0);
    n = tags_of("The cardiac silhouette is moderately enlarged.", t);
    assert_int_equal(n, 1);
    assert_int_equal(t[0], 6);
    n = tags_of("Hyperinflated lungs with flattened hemidiaphragms.\nBilateral small pleural "
                "effusions.",
                t);
    assert_true(has(t, n, 7) && has(t, n, 3) && has(t, n, 8 + 16 * 3 + 5) &&
                has(t, n, 8 + 16 * 3 + 6));
    n = tags_of("Patchy airspace opacity in the left lung base.", t);
    assert_true(has(t, n, 5) && has(t, n, 8 + 16 * 5 + 4));
    n = tags_of("", t);
    assert_int_equal(n, 1);
    assert_int_equal(t[0], 0);
    /* sorted and distinct; cap respected */
    n = tags_of("Nodule in the right upper lobe. Another nodule in the right upper lobe. "
                "Left pneumothorax.",
                t);
    for (int i = 1; i < n; i++)
        assert_true(t[i - 1] < t[i]);
    assert_int_equal(trn_report_tags("Left pneumothorax. Right mass.", t, 1), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slice_select),
        cmocka_unit_test(test_report_tags),
        cmocka_unit_test(test_report_phrase),
        cmocka_unit_test_setup_teardown(test_phrases_train, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reserve, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trainer_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loss_decreases, setup, teardown),
        cmocka_unit_test_setup_teardown(test_side_negatives, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lobe_negatives, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vis_tag_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pairs, setup, teardown),
        cmocka_unit_test(test_report_swap),
        cmocka_unit_test_setup_teardown(test_resume_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_loads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_init_from, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
