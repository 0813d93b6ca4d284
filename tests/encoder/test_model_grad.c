/* test_model_grad.c - the backward passes of whole models, end to end.
 *
 * A tiny random medsem model (ViT 16 wide, 2 layers, 2 heads, shared by a
 * 2D image 8x8 / patch 4 and a 3D volume 4x8x8 / patch 2x4x4; BERT 16 wide,
 * 2 layers, 2 heads, vocabulary 50, 8 tokens; embedding 8) and the loss
 *     L = sum(image_embed * Wi) + sum(volume_embed * Wv) + sum(text_embed * Wt)
 * for an image batch, a volume batch and a text batch with padding (W
 * fixed random).  One g receives enc_backward_image, _volume and _text;
 * every entry of every parameter tensor (10160; ~1.5 s) is compared with a
 * finite difference of the float forward (the model's own encode, weights
 * changed through enc_model_param_mut, the loss summed in double).  The
 * m3d-clip and biomedclip layouts are checked on samples (tensors up to 24
 * entries whole, 12 entries of each larger one).
 *
 * Finite differences of a float32 forward: the embeddings carry rounding
 * noise of ~1e-7, which moves L by ~1e-6 at random as a weight changes, and
 * a difference quotient divides that by the step.  The fourth-order stencil
 *     (8 (L(w+h) - L(w-h)) - (L(w+2h) - L(w-2h))) / 12h,   h = 2e-2
 * has truncation error ~h^4 (~1e-7) and keeps the noise near 5e-5 (max
 * over every checked entry, measured: 3.3e-4 for h = 1e-3, 1.1e-4 for
 * 1e-2, 5e-5 for 2e-2, 3e-5 for 4e-2 where truncation starts to show).
 * Each entry must satisfy
 *     |analytic - fd| <= max(1e-2 |fd|, 2e-4)
 * (2e-4: four times that noise; 1e-2 relative lets through no real error -
 * a missing term or a transposed weight is O(|fd|)), and each tensor's
 * normwise relative error max|a - fd| / max|fd| is printed.  The key
 * biases get no gradient at all (softmax ignores a shift of a row's
 * scores, and q . b_k shifts the whole row): checked to be ~0.
 *
 * Also: accumulation (image then volume into one g = the sum of separate
 * runs; backward twice = 2x), a training state encodes exactly as a plain
 * one, [CLS] attention against the full probabilities, the m3d-clip and
 * biomedclip layouts (sampled), trainable loading of the medsem fixture,
 * one SGD step lowering the loss, and the API's refusals.
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
#include <sys/stat.h>

#include <cmocka.h>

#include "encoder/model.h"
#include "testutil.h"

#define SMALL ((size_t)1 << 30) /* medsem: tensors checked whole up to this size (all) */
#define SAMPLE 40                /* and this many entries of larger ones */
#define H_FD 2e-2
#define RTOL 1e-2
#define ATOL 2e-4

static const char medsem_cfg[] =
    "{\"architecture\":\"medsem\",\"embed_dim\":8,"
    "\"vision\":{\"hidden_size\":16,\"num_layers\":2,\"num_heads\":2,\"mlp_dim\":24,"
    "\"layer_norm_eps\":1e-6,\"in_channels\":1,\"image_size\":[8,8],\"patch_size\":[4,4],"
    "\"volume_size\":[4,8,8],\"volume_patch_size\":[2,4,4]},"
    "\"text\":{\"vocab_size\":50,\"hidden_size\":16,\"num_layers\":2,\"num_heads\":2,"
    "\"intermediate_size\":24,\"max_position_embeddings\":8,\"type_vocab_size\":2,"
    "\"layer_norm_eps\":1e-12,\"max_len\":8}}";

/* medsem with a two-convolution stem (3 then 4 channels, kernel 3, stride
 * 2): the patch embedding then reads 4 channels in 1 x 1 (2D) and 1 x 1 x 1
 * (3D) patches of the stem's output.  Vision only. */
static const char medsem_stem_cfg[] =
    "{\"architecture\":\"medsem\",\"embed_dim\":6,"
    "\"vision\":{\"hidden_size\":8,\"num_layers\":1,\"num_heads\":2,\"mlp_dim\":12,"
    "\"layer_norm_eps\":1e-6,\"in_channels\":1,\"image_size\":[8,8],\"patch_size\":[4,4],"
    "\"volume_size\":[4,8,8],\"volume_patch_size\":[4,4,4],\"stem_channels\":[3,4]}}";

/* M3D-CLIP: MONAI patch order, no [CLS] position, no qkv bias, biased
 * projections; 2 input channels. */
static const char m3d_cfg[] =
    "{\"model_type\":\"m3d_clip\",\"in_channels\":2,\"img_size\":[4,8,8],"
    "\"patch_size\":[2,4,4],\"hidden_size\":12,\"mlp_dim\":20,\"num_layers\":1,"
    "\"num_heads\":3,\"vocab_size\":30,\"max_text_len\":6,\"pos_embed\":\"perceptron\","
    "\"spatial_dims\":3}";

/* BiomedCLIP: 3 channels, an MLP text projection. */
static const char biomedclip_cfg[] =
    "{\"architecture\":\"biomedclip\",\"model_cfg\":{\"embed_dim\":6,"
    "\"vision_cfg\":{\"timm_proj\":\"linear\",\"image_size\":[8,12],\"patch_size\":4,"
    "\"in_chans\":3,\"width\":8,\"layers\":1,\"heads\":2,\"mlp_ratio\":1.5},"
    "\"text_cfg\":{\"hf_proj_type\":\"mlp\",\"context_length\":6,\"vocab_size\":30,"
    "\"hidden_size\":10,\"layers\":1,\"heads\":2,\"intermediate_size\":14,"
    "\"max_position_embeddings\":8}}}";

/* ---- a problem: model, inputs, loss weights, states ---------------------------------- */

typedef struct problem {
    enc_model *m;
    int E;
    int B[3];          /* batch per kind (0: the model lacks it) */
    float *in[3];      /* image, volume inputs */
    int32_t *ids, *mask;
    int L;             /* text length */
    float *W[3];       /* loss weights [B, E] */
    enc_state *plain[3], *train[3];
    float *emb;        /* scratch [max B, E] */
} problem;

static void problem_new(problem *p, const char *cfg, uint64_t seed, int nthreads)
{
    memset(p, 0, sizeof *p);
    char err[512] = "";
    enc_model_opts mo = {.nthreads = nthreads, .trainable = 1};
    int rc = enc_model_new_random(cfg, seed, &mo, &p->m, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, ENC_OK);
    p->E = enc_model_embed_dim(p->m);
    tu_rng r;
    tu_rng_seed(&r, seed + 1000);
    static const int batch[3] = {3, 2, 3};
    for (int k = 0; k < 3; k++) {
        enc_input_geom g;
        if (enc_model_geom(p->m, (enc_kind)k, &g) != ENC_OK)
            continue;
        p->B[k] = batch[k];
        if (k < 2) {
            size_t n = (size_t)batch[k] * g.channels * g.size[0] * g.size[1] * g.size[2];
            p->in[k] = malloc(n * sizeof(float));
            assert_non_null(p->in[k]);
            tu_fill_normal(&r, p->in[k], n);
        } else {
            p->L = g.tokens;
            size_t n = (size_t)batch[k] * p->L;
            p->ids = malloc(n * sizeof(int32_t));
            p->mask = malloc(n * sizeof(int32_t));
            assert_non_null(p->ids);
            assert_non_null(p->mask);
            for (int b = 0; b < batch[k]; b++) {
                int len = b == 0 ? p->L : b == 1 ? p->L - 3 : 2; /* full, padded, short */
                for (int t = 0; t < p->L; t++) {
                    p->ids[b * p->L + t] =
                        t < len ? (int32_t)tu_rng_below(&r, (uint64_t)g.vocab_size) : 0;
                    p->mask[b * p->L + t] = t < len;
                }
            }
        }
        p->W[k] = malloc((size_t)batch[k] * p->E * sizeof(float));
        assert_non_null(p->W[k]);
        tu_fill_normal(&r, p->W[k], (size_t)batch[k] * p->E);
        enc_state_opts so = {.flags = ENC_STATE_TRAIN};
        assert_int_equal(enc_state_new(p->m, (enc_kind)k, batch[k], NULL, &p->plain[k], err,
                                       sizeof err),
                         ENC_OK);
        rc = enc_state_new(p->m, (enc_kind)k, batch[k], &so, &p->train[k], err, sizeof err);
        if (rc)
            print_error("%s\n", err);
        assert_int_equal(rc, ENC_OK);
    }
    p->emb = malloc((size_t)4 * p->E * sizeof(float));
    assert_non_null(p->emb);
}

static void problem_free(problem *p)
{
    for (int k = 0; k < 3; k++) {
        enc_state_free(p->plain[k]);
        enc_state_free(p->train[k]);
        free(p->in[k]);
        free(p->W[k]);
    }
    free(p->ids), free(p->mask), free(p->emb);
    enc_model_free(p->m);
}

static void encode(problem *p, enc_state *s, int k, float *out)
{
    int rc = k == 0   ? enc_encode_image(s, p->in[0], p->B[0], out)
             : k == 1 ? enc_encode_volume(s, p->in[1], p->B[1], out)
                      : enc_encode_text(s, p->ids, p->mask, p->B[2], p->L, out);
    if (rc)
        print_error("%s\n", enc_state_errmsg(s));
    assert_int_equal(rc, ENC_OK);
}

/* sum(embed * W) of kind k through the plain state, in double. */
static double loss_kind(problem *p, int k)
{
    if (p->B[k] == 0)
        return 0;
    encode(p, p->plain[k], k, p->emb);
    double L = 0;
    for (int i = 0; i < p->B[k] * p->E; i++)
        L += (double)p->emb[i] * p->W[k][i];
    return L;
}

/* The kinds a parameter can change: 1 image, 2 volume, 4 text. */
static int kinds_of(const char *name)
{
    static const char *const text_prefix[] = {"text.", "language_encoder.", "mm_language_proj"};
    for (int i = 0; i < 3; i++)
        if (strncmp(name, text_prefix[i], strlen(text_prefix[i])) == 0)
            return 4;
    return 3;
}

static double loss_of(problem *p, int kinds)
{
    double L = 0;
    for (int k = 0; k < 3; k++)
        if (kinds & (1 << k))
            L += loss_kind(p, k);
    return L;
}

/* Encodes kind k through its training state and adds its gradient to g. */
static void backward(problem *p, int k, enc_grads *g)
{
    encode(p, p->train[k], k, p->emb);
    int rc = k == 0   ? enc_backward_image(p->train[k], p->W[k], g)
             : k == 1 ? enc_backward_volume(p->train[k], p->W[k], g)
                      : enc_backward_text(p->train[k], p->W[k], g);
    if (rc)
        print_error("%s\n", enc_state_errmsg(p->train[k]));
    assert_int_equal(rc, ENC_OK);
}

/* ---- the finite-difference check ------------------------------------------------------ */

/* Checks every parameter of p against the fourth-order stencil: all
 * entries of tensors up to small, sample entries of the others.  Returns
 * the worst normwise relative error. */
static double check_all(problem *p, enc_grads *g, size_t small, size_t sample, int verbose)
{
    tu_rng r;
    tu_rng_seed(&r, 4242);
    double worst = 0;
    size_t checked = 0;
    for (size_t i = 0; i < enc_model_param_count(p->m); i++) {
        enc_param par;
        enc_model_param(p->m, i, &par);
        float *w = enc_model_param_mut(p->m, i);
        const float *a = enc_grads_data(g, i);
        assert_non_null(w);
        assert_true(w == par.data);
        int kinds = kinds_of(par.name);
        size_t cnt = par.count <= small ? par.count : sample;
        double emax = 0, fmax_ = 0, amax = 0;
        for (size_t j = 0; j < cnt; j++) {
            size_t k = par.count <= small ? j : (size_t)tu_rng_below(&r, par.count);
            float keep = w[k];
            double L[4];
            static const double step[4] = {1, -1, 2, -2};
            for (int s = 0; s < 4; s++) {
                w[k] = (float)(keep + step[s] * H_FD);
                L[s] = loss_of(p, kinds);
            }
            w[k] = keep;
            double fd = (8 * (L[0] - L[1]) - (L[2] - L[3])) / (12 * H_FD);
            double e = fabs(a[k] - fd);
            if (!(e <= fmax(RTOL * fabs(fd), ATOL))) {
                print_error("%s[%zu]: analytic %.7g, finite difference %.7g\n", par.name, k,
                            (double)a[k], fd);
                fail();
            }
            emax = fmax(emax, e);
            fmax_ = fmax(fmax_, fabs(fd));
            amax = fmax(amax, fabs(a[k]));
        }
        checked += cnt;
        if (strstr(par.name, "key.bias") != NULL) { /* shift invariance: exactly 0 */
            assert_true(amax <= 1e-6);
            if (verbose)
                printf("    %-54s %4zu/%-4zu zero gradient: max|a| %.1e max|fd| %.1e\n",
                       par.name, cnt, par.count, amax, fmax_);
            continue;
        }
        double rel = emax / (fmax_ > 0 ? fmax_ : 1);
        worst = fmax(worst, rel);
        if (verbose)
            printf("    %-54s %4zu/%-4zu max|a-fd| %.1e max|fd| %.1e rel %.1e\n", par.name,
                   cnt, par.count, emax, fmax_, rel);
    }
    printf("  %s: %zu parameter tensors, %zu entries checked, worst normwise relative error "
           "%.2e\n",
           enc_model_arch(p->m), enc_model_param_count(p->m), checked, worst);
    return worst;
}

/* ---- tests ---------------------------------------------------------------------------- */

static void test_medsem_grad(void **state)
{
    (void)state;
    problem p;
    problem_new(&p, medsem_cfg, 17, 2);
    enc_grads *g;
    assert_int_equal(enc_grads_new(p.m, &g), ENC_OK);
    for (int k = 0; k < 3; k++) /* one g for all three kinds */
        backward(&p, k, g);
    check_all(&p, g, SMALL, SAMPLE, 1);
    enc_grads_free(g);
    problem_free(&p);
}

/* Every entry of the stem's convolutions, the patch embedding behind them
 * and the rest, for images and volumes summed into one g. */
static void test_medsem_stem_grad(void **state)
{
    (void)state;
    problem p;
    problem_new(&p, medsem_stem_cfg, 23, 2);
    enc_param par;
    enc_model_param(p.m, 0, &par);
    assert_string_equal(par.name, "vision.stem2d.0.weight");
    assert_int_equal(par.rank, 4);
    assert_int_equal(par.shape[0], 3);
    enc_grads *g;
    assert_int_equal(enc_grads_new(p.m, &g), ENC_OK);
    for (int k = 0; k < 2; k++)
        backward(&p, k, g);
    check_all(&p, g, SMALL, SAMPLE, 1);
    enc_grads_free(g);
    problem_free(&p);
}

static void test_other_layouts(void **state)
{
    (void)state;
    static const char *const cfgs[] = {m3d_cfg, biomedclip_cfg};
    for (int c = 0; c < 2; c++) {
        problem p;
        problem_new(&p, cfgs[c], 23, 1);
        enc_grads *g;
        assert_int_equal(enc_grads_new(p.m, &g), ENC_OK);
        for (int k = 0; k < 3; k++)
            if (p.B[k])
                backward(&p, k, g);
        check_all(&p, g, 24, 12, 0);
        enc_grads_free(g);
        problem_free(&p);
    }
}

/* max |a - b| relative to max |b| over every gradient */
static double grads_diff(const problem *p, enc_grads *a, enc_grads *b, double scale_b)
{
    double e = 0, m = 0;
    for (size_t i = 0; i < enc_model_param_count(p->m); i++) {
        enc_param par;
        enc_model_param(p->m, i, &par);
        const float *x = enc_grads_data(a, i), *y = enc_grads_data(b, i);
        for (size_t j = 0; j < par.count; j++) {
            e = fmax(e, fabs((double)x[j] - scale_b * y[j]));
            m = fmax(m, fabs(scale_b * y[j]));
        }
    }
    return e / (m > 0 ? m : 1);
}

static void test_accumulation(void **state)
{
    (void)state;
    problem p;
    problem_new(&p, medsem_cfg, 31, 2);
    enc_grads *gi, *gv, *both, *sum;
    assert_int_equal(enc_grads_new(p.m, &gi), ENC_OK);
    assert_int_equal(enc_grads_new(p.m, &gv), ENC_OK);
    assert_int_equal(enc_grads_new(p.m, &both), ENC_OK);
    assert_int_equal(enc_grads_new(p.m, &sum), ENC_OK);
    assert_true(enc_grads_bytes(both) >= 4 * 5000);
    backward(&p, 0, gi);
    backward(&p, 1, gv);
    backward(&p, 0, both);
    backward(&p, 1, both);
    size_t np = enc_model_param_count(p.m);
    int touched2d = 0, touched3d = 0;
    for (size_t i = 0; i < np; i++) {
        enc_param par;
        enc_model_param(p.m, i, &par);
        const float *a = enc_grads_data(gi, i), *b = enc_grads_data(gv, i);
        float *s = enc_grads_data(sum, i);
        for (size_t j = 0; j < par.count; j++)
            s[j] = a[j] + b[j];
        /* the 2D-only and 3D-only tensors get exactly one contribution */
        if (strncmp(par.name, "vision.patch2d", 14) == 0 || strcmp(par.name, "vision.pos2d") == 0) {
            assert_memory_equal(enc_grads_data(both, i), a, par.count * sizeof(float));
            for (size_t j = 0; j < par.count; j++)
                assert_true(b[j] == 0.0f);
            touched2d++;
        }
        if (strncmp(par.name, "vision.patch3d", 14) == 0 || strcmp(par.name, "vision.pos3d") == 0) {
            for (size_t j = 0; j < par.count; j++)
                assert_true(a[j] == 0.0f);
            touched3d++;
        }
        if (strncmp(par.name, "text.", 5) == 0) /* no text call: untouched */
            for (size_t j = 0; j < par.count; j++)
                assert_true(enc_grads_data(both, i)[j] == 0.0f);
    }
    assert_int_equal(touched2d, 3);
    assert_int_equal(touched3d, 3);
    double d = grads_diff(&p, both, sum, 1.0);
    printf("  image then volume into one g vs the sum of separate runs: %.2e\n", d);
    assert_true(d <= 1e-6);
    /* the same encode differentiated twice: twice the gradient */
    enc_grads_zero(both);
    backward(&p, 2, both);
    assert_int_equal(enc_backward_text(p.train[2], p.W[2], both), ENC_OK);
    enc_grads_zero(sum);
    backward(&p, 2, sum);
    d = grads_diff(&p, both, sum, 2.0);
    printf("  text backward twice vs 2 x once: %.2e\n", d);
    assert_true(d <= 1e-6);
    enc_grads_free(gi), enc_grads_free(gv), enc_grads_free(both), enc_grads_free(sum);
    enc_grads_free(NULL);
    problem_free(&p);
}

/* A state planned for more (batch 5, 8 tokens) differentiates a smaller
 * call (batch 2 or 3, 6 tokens) exactly as a state planned for that call:
 * the per-layer slices are laid out for the plan, the data for the call. */
static void test_smaller_call(void **state)
{
    (void)state;
    problem p;
    problem_new(&p, medsem_cfg, 41, 2);
    const int Ls = 6;
    int32_t ids[3 * 6], mask[3 * 6];
    for (int b = 0; b < 3; b++)
        for (int t = 0; t < Ls; t++)
            ids[b * Ls + t] = p.ids[b * p.L + t], mask[b * Ls + t] = p.mask[b * p.L + t];
    float out[5 * 8];
    for (int k = 0; k < 3; k++) {
        enc_state *big, *exact;
        enc_state_opts sb = {.flags = ENC_STATE_TRAIN}, se = sb;
        if (k == 2)
            se.max_len = Ls;
        assert_int_equal(enc_state_new(p.m, (enc_kind)k, 5, &sb, &big, NULL, 0), ENC_OK);
        assert_int_equal(enc_state_new(p.m, (enc_kind)k, p.B[k], &se, &exact, NULL, 0), ENC_OK);
        enc_grads *g1, *g2;
        assert_int_equal(enc_grads_new(p.m, &g1), ENC_OK);
        assert_int_equal(enc_grads_new(p.m, &g2), ENC_OK);
        enc_state *ss[2] = {big, exact};
        enc_grads *gg[2] = {g1, g2};
        for (int i = 0; i < 2; i++) {
            int rc = k == 0   ? enc_encode_image(ss[i], p.in[0], p.B[0], out)
                     : k == 1 ? enc_encode_volume(ss[i], p.in[1], p.B[1], out)
                              : enc_encode_text(ss[i], ids, mask, p.B[2], Ls, out);
            assert_int_equal(rc, ENC_OK);
            rc = k == 0   ? enc_backward_image(ss[i], p.W[0], gg[i])
                 : k == 1 ? enc_backward_volume(ss[i], p.W[1], gg[i])
                          : enc_backward_text(ss[i], p.W[2], gg[i]);
            assert_int_equal(rc, ENC_OK);
        }
        for (size_t i = 0; i < enc_model_param_count(p.m); i++) {
            enc_param par;
            enc_model_param(p.m, i, &par);
            assert_memory_equal(enc_grads_data(g1, i), enc_grads_data(g2, i),
                                par.count * sizeof(float));
        }
        enc_grads_free(g1), enc_grads_free(g2);
        enc_state_free(big), enc_state_free(exact);
    }
    problem_free(&p);
}

/* A training state encodes exactly as a plain one (and with CLSATT too). */
static void test_train_forward_same(void **state)
{
    (void)state;
    problem p;
    problem_new(&p, medsem_cfg, 5, 2);
    float a[4 * 8], b[4 * 8];
    for (int k = 0; k < 3; k++) {
        encode(&p, p.plain[k], k, a);
        encode(&p, p.train[k], k, b);
        assert_memory_equal(a, b, (size_t)p.B[k] * p.E * sizeof(float));
        enc_state *s;
        enc_state_opts so = {.flags = ENC_STATE_CLSATT | ENC_STATE_TRAIN};
        assert_int_equal(enc_state_new(p.m, (enc_kind)k, p.B[k], &so, &s, NULL, 0), ENC_OK);
        encode(&p, s, k, b);
        assert_memory_equal(a, b, (size_t)p.B[k] * p.E * sizeof(float));
        /* every layer's residual stream is kept */
        assert_non_null(enc_state_hidden(s, 0));
        assert_non_null(enc_state_hidden(s, 1));
        enc_state_free(s);
    }
    problem_free(&p);
}

/* [CLS] attention, layer and head mean, against ENC_STATE_PROBS. */
static void test_cls_attention(void **state)
{
    (void)state;
    problem p;
    problem_new(&p, medsem_cfg, 9, 2);
    for (int k = 0; k < 3; k++) {
        enc_input_geom g;
        assert_int_equal(enc_model_geom(p.m, (enc_kind)k, &g), ENC_OK);
        enc_state *s;
        enc_state_opts so = {.flags = ENC_STATE_PROBS | ENC_STATE_CLSATT};
        assert_int_equal(enc_state_new(p.m, (enc_kind)k, p.B[k], &so, &s, NULL, 0), ENC_OK);
        assert_null(enc_state_cls_attention(s)); /* nothing encoded yet */
        encode(&p, s, k, p.emb);
        const float *ca = enc_state_cls_attention(s);
        assert_non_null(ca);
        const int B = p.B[k], T = enc_state_tokens(s), H = g.num_heads, Lr = g.num_layers;
        double e = 0;
        for (int b = 0; b < B; b++) {
            double rowsum = 0;
            for (int j = 1; j < T; j++) {
                double want = 0;
                for (int l = 0; l < Lr; l++) {
                    const float *pr = enc_state_probs(s, l);
                    for (int h = 0; h < H; h++)
                        want += pr[(((size_t)b * H + h) * T + 0) * T + j];
                }
                want /= (double)Lr * H;
                e = fmax(e, fabs(ca[(size_t)b * (T - 1) + j - 1] - want));
                rowsum += ca[(size_t)b * (T - 1) + j - 1];
                if (k == 2 && !p.mask[b * p.L + j]) /* padding gets no attention */
                    assert_true(ca[(size_t)b * (T - 1) + j - 1] == 0.0f);
            }
            assert_true(rowsum < 1.0 + 1e-5);
        }
        printf("  cls attention %-6s vs the full probabilities: max diff %.1e\n",
               k == 0 ? "image" : k == 1 ? "volume" : "text", e);
        assert_true(e <= 1e-6);
        /* plain states have none */
        assert_null(enc_state_cls_attention(p.plain[k]));
        enc_state_free(s);
    }
    problem_free(&p);
}

/* One SGD step along -g lowers the loss: the writable weights are the ones
 * the forward reads. */
static void test_sgd_step(void **state)
{
    (void)state;
    problem p;
    problem_new(&p, medsem_cfg, 77, 2);
    enc_grads *g;
    assert_int_equal(enc_grads_new(p.m, &g), ENC_OK);
    double before = loss_of(&p, 7);
    for (int k = 0; k < 3; k++)
        backward(&p, k, g);
    double gg = 0;
    for (size_t i = 0; i < enc_model_param_count(p.m); i++) {
        enc_param par;
        enc_model_param(p.m, i, &par);
        for (size_t j = 0; j < par.count; j++)
            gg += (double)enc_grads_data(g, i)[j] * enc_grads_data(g, i)[j];
    }
    double lr = 1e-3;
    for (size_t i = 0; i < enc_model_param_count(p.m); i++) {
        enc_param par;
        enc_model_param(p.m, i, &par);
        float *w = enc_model_param_mut(p.m, i);
        for (size_t j = 0; j < par.count; j++)
            w[j] -= (float)(lr * enc_grads_data(g, i)[j]);
    }
    double after = loss_of(&p, 7);
    printf("  SGD step: loss %.6f -> %.6f (first-order prediction %.6f)\n", before, after,
           before - lr * gg);
    assert_true(after < before);
    assert_true(fabs((before - after) - lr * gg) <= 0.1 * lr * gg);
    enc_grads_free(g);
    problem_free(&p);
}

static void test_refusals(void **state)
{
    (void)state;
    char err[512];
    enc_model *m;
    assert_int_equal(enc_model_new_random(medsem_cfg, 3, NULL, &m, err, sizeof err), ENC_OK);
    enc_grads *g = NULL;
    assert_int_equal(enc_grads_new(m, &g), ENC_INVAL); /* not trainable */
    assert_null(g);
    assert_null(enc_model_param_mut(m, 0));
    enc_state *s = NULL;
    enc_state_opts so = {.flags = ENC_STATE_TRAIN};
    assert_int_equal(enc_state_new(m, ENC_IMAGE, 1, &so, &s, err, sizeof err), ENC_INVAL);
    assert_non_null(strstr(err, "trainable"));
    assert_null(s);
    enc_model_free(m);

    problem p, q;
    problem_new(&p, medsem_cfg, 3, 1);
    problem_new(&q, medsem_cfg, 4, 1);
    assert_int_equal(enc_grads_new(p.m, &g), ENC_OK);
    assert_null(enc_model_param_mut(p.m, enc_model_param_count(p.m)));
    float d[4 * 8] = {0};
    /* before any encode */
    assert_int_equal(enc_backward_image(p.train[0], d, g), ENC_INVAL);
    assert_non_null(strstr(enc_state_errmsg(p.train[0]), "encode"));
    encode(&p, p.train[0], 0, p.emb);
    /* wrong kind, plain state, other model's grads, NULL */
    assert_int_equal(enc_backward_volume(p.train[0], d, g), ENC_INVAL);
    assert_non_null(strstr(enc_state_errmsg(p.train[0]), "image"));
    encode(&p, p.plain[0], 0, p.emb);
    assert_int_equal(enc_backward_image(p.plain[0], d, g), ENC_INVAL);
    assert_non_null(strstr(enc_state_errmsg(p.plain[0]), "ENC_STATE_TRAIN"));
    enc_grads *gq;
    assert_int_equal(enc_grads_new(q.m, &gq), ENC_OK);
    encode(&p, p.train[0], 0, p.emb);
    assert_int_equal(enc_backward_image(p.train[0], d, gq), ENC_INVAL);
    assert_int_equal(enc_backward_image(p.train[0], NULL, g), ENC_INVAL);
    assert_int_equal(enc_backward_image(p.train[0], d, g), ENC_OK);
    assert_string_equal(enc_state_errmsg(p.train[0]), "");
    /* a failed encode leaves nothing to differentiate */
    assert_int_equal(enc_encode_image(p.train[0], p.in[0], 99, p.emb), ENC_INVAL);
    assert_int_equal(enc_backward_image(p.train[0], d, g), ENC_INVAL);
    enc_grads_free(g), enc_grads_free(gq);
    problem_free(&p), problem_free(&q);
}

/* The medsem fixture loaded trainable: the same weights, copied into one
 * writable arena, and the same embeddings. */
static void test_trainable_load(void **state)
{
    (void)state;
    char dir[1024];
    const char *top = getenv("top_srcdir");
    if (top != NULL && *top) {
        snprintf(dir, sizeof dir, "%s/tests/fixtures/models/medsem", top);
    } else {
        const char *me = __FILE__, *tail = "tests/encoder/test_model_grad.c";
        size_t n = strlen(me), t = strlen(tail);
        size_t keep = n >= t && strcmp(me + n - t, tail) == 0 ? n - t : 0;
        snprintf(dir, sizeof dir, "%.*stests/fixtures/models/medsem", (int)keep, me);
    }
    struct stat st;
    if (stat(dir, &st) != 0) {
        printf("  no fixture directory %s, skipped\n", dir);
        skip();
    }
    char err[512] = "";
    enc_model *a, *b;
    enc_model_opts tr = {.nthreads = 1, .trainable = 1}, ro = {.nthreads = 1};
    assert_int_equal(enc_model_load(dir, &ro, &a, err, sizeof err), ENC_OK);
    int rc = enc_model_load(dir, &tr, &b, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, ENC_OK);
    assert_string_equal(enc_model_id(a), enc_model_id(b));
    assert_int_equal(enc_model_param_count(a), enc_model_param_count(b));
    assert_null(enc_model_param_mut(a, 0));
    for (size_t i = 0; i < enc_model_param_count(a); i++) {
        enc_param pa, pb;
        enc_model_param(a, i, &pa);
        enc_model_param(b, i, &pb);
        assert_string_equal(pa.name, pb.name);
        assert_true(pa.data != pb.data);
        assert_memory_equal(pa.data, pb.data, pa.count * sizeof(float));
        assert_true(enc_model_param_mut(b, i) == pb.data);
    }
    enc_input_geom g;
    assert_int_equal(enc_model_geom(a, ENC_IMAGE, &g), ENC_OK);
    size_t n = (size_t)g.channels * g.size[1] * g.size[2];
    float *img = malloc(n * sizeof(float));
    tu_rng r;
    tu_rng_seed(&r, 1);
    tu_fill_normal(&r, img, n);
    int E = enc_model_embed_dim(a);
    float *ea = malloc((size_t)E * sizeof(float)), *eb = malloc((size_t)E * sizeof(float));
    enc_state *sa, *sb;
    enc_state_opts so = {.flags = ENC_STATE_TRAIN};
    assert_int_equal(enc_state_new(a, ENC_IMAGE, 1, NULL, &sa, err, sizeof err), ENC_OK);
    assert_int_equal(enc_state_new(b, ENC_IMAGE, 1, &so, &sb, err, sizeof err), ENC_OK);
    assert_int_equal(enc_encode_image(sa, img, 1, ea), ENC_OK);
    assert_int_equal(enc_encode_image(sb, img, 1, eb), ENC_OK);
    assert_memory_equal(ea, eb, (size_t)E * sizeof(float));
    enc_grads *gr;
    assert_int_equal(enc_grads_new(b, &gr), ENC_OK);
    assert_int_equal(enc_backward_image(sb, ea, gr), ENC_OK);
    /* writing a weight changes what the model computes */
    enc_model_param_mut(b, 0)[0] += 1.0f;
    assert_int_equal(enc_encode_image(sb, img, 1, eb), ENC_OK);
    assert_memory_not_equal(ea, eb, (size_t)E * sizeof(float));
    enc_grads_free(gr);
    enc_state_free(sa), enc_state_free(sb);
    free(img), free(ea), free(eb);
    enc_model_free(a), enc_model_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_medsem_grad),
        cmocka_unit_test(test_medsem_stem_grad),
        cmocka_unit_test(test_other_layouts),
        cmocka_unit_test(test_accumulation),
        cmocka_unit_test(test_smaller_call),
        cmocka_unit_test(test_train_forward_same),
        cmocka_unit_test(test_cls_attention),
        cmocka_unit_test(test_sgd_step),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_trainable_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
