/* test_train_parts.c - the self-contained parts of training (train/train.h):
 * losses, AdamW, clipping, schedule, checkpoints, retrieval metrics and the
 * WordPiece vocabulary builder.
 *
 * tests/fixtures/train/ holds what PyTorch computed for the same inputs
 * (tests/fixtures/make_train_fixtures.py; CI needs no Python): loss values
 * and gradients must agree to 1e-5 (relative to max(1, |value|)), the
 * optimizer's parameters and moments after 12 clipped, scheduled steps to
 * 1e-6.  Finite differences check the gradients independently; metrics are
 * checked on hand-made cases whose answers are worked out in the comments;
 * the vocabulary is checked through encoder/tokenizer.c itself.
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

#include <cmocka.h>

#include "encoder/encoder.h"
#include "train/train.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------ */

/* tests/fixtures/train/name: from $top_srcdir when make check sets it, else
 * next to this source file.  malloc'd. */
static char *fixture_path(const char *name)
{
    char *p = tu_fixture("train", name);
    assert_non_null(p);
    return p;
}

static enc_st *open_fixture(const char *name)
{
    char *path = fixture_path(name);
    char err[512];
    enc_st *st = NULL;
    if (enc_st_open(path, &st, err, sizeof err) != ENC_OK)
        fail_msg("%s (set top_srcdir to the source tree)", err);
    free(path);
    return st;
}

/* Tensor name of st, any shape; *n gets its element count. */
static const float *get(enc_st *st, const char *name, size_t *n)
{
    enc_st_info info;
    if (enc_st_info_get(st, name, &info) != ENC_OK)
        fail_msg("fixture lacks '%s'", name);
    const float *p = NULL;
    char err[256];
    if (enc_st_get(st, name, info.rank, info.shape, &p, err, sizeof err) != ENC_OK)
        fail_msg("%s", err);
    if (n != NULL)
        *n = info.nelem;
    return p;
}

static const float *getf(enc_st *st, const char *fmt, const char *arg, size_t *n)
{
    char name[256];
    snprintf(name, sizeof name, fmt, arg);
    return get(st, name, n);
}

/* |got - want| <= tol * max(1, |want|) for every element. */
static void expect_close(const char *what, const float *got, const float *want, size_t n,
                         double tol)
{
    for (size_t i = 0; i < n; i++) {
        double w = want[i], g = got[i];
        double lim = tol * (fabs(w) > 1 ? fabs(w) : 1);
        if (!(fabs(g - w) <= lim))
            fail_msg("%s[%zu]: %.9g, want %.9g (diff %.3g > %.3g)", what, i, g, w, fabs(g - w),
                     lim);
    }
}

static float *falloc(size_t n)
{
    float *p = calloc(n > 0 ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

/* ---- CLIP loss ---------------------------------------------------------------------------- */

static void check_clip_case(enc_st *st, const char *c, int use_targets)
{
    size_t na, nt, nb;
    const float *a = getf(st, "%s.a", c, &na);
    const float *b = getf(st, "%s.b", c, &nb);
    const float *T = getf(st, "%s.targets", c, &nt);
    float s = getf(st, "%s.log_scale", c, NULL)[0];
    int B = (int)lrint(sqrt((double)nt));
    int E = (int)(na / (size_t)B);
    assert_int_equal((size_t)B * B, nt);
    assert_int_equal(na, nb);
    float *work = falloc(trn_loss_clip_work_floats(B));
    float *da = falloc(na), *db = falloc(na), ds = 0;
    const float *tg = use_targets ? T : NULL;
    float loss = trn_loss_clip_forward(a, b, B, E, s, tg, work);
    trn_loss_clip_backward(a, b, B, E, s, tg, 1.0f, work, da, db, &ds);
    char what[64];
    snprintf(what, sizeof what, "%s.loss", c);
    expect_close(what, &loss, getf(st, "%s.loss", c, NULL), 1, 1e-5);
    snprintf(what, sizeof what, "%s.da", c);
    expect_close(what, da, getf(st, "%s.da", c, NULL), na, 1e-5);
    snprintf(what, sizeof what, "%s.db", c);
    expect_close(what, db, getf(st, "%s.db", c, NULL), na, 1e-5);
    snprintf(what, sizeof what, "%s.dlog_scale", c);
    expect_close(what, &ds, getf(st, "%s.dlog_scale", c, NULL), 1, 1e-5);
    free(work);
    free(da);
    free(db);
}

static void test_clip_fixtures(void **state)
{
    (void)state;
    enc_st *st = open_fixture("loss.safetensors");
    check_clip_case(st, "hard", 0);
    check_clip_case(st, "hard", 1); /* the identity given explicitly */
    check_clip_case(st, "clamped", 0);
    check_clip_case(st, "soft", 1);
    check_clip_case(st, "wide", 0);
    /* clamped: exp(s) = 200 is capped, so log_scale gets nothing */
    assert_true(getf(st, "%s.dlog_scale", "clamped", NULL)[0] == 0.0f);
    enc_st_close(st);
}

static void test_soft_targets(void **state)
{
    (void)state;
    enc_st *st = open_fixture("loss.safetensors");
    size_t ntag, noff, nt;
    const float *ftags = get(st, "soft.tags", &ntag);
    const float *foff = get(st, "soft.tag_off", &noff);
    const float *want = get(st, "soft.targets", &nt);
    float alpha = get(st, "soft.alpha", NULL)[0];
    int B = (int)noff - 1;
    int32_t *tags = calloc(ntag + 1, sizeof *tags);
    size_t *off = calloc(noff, sizeof *off);
    assert_non_null(tags);
    assert_non_null(off);
    for (size_t i = 0; i < ntag; i++)
        tags[i] = (int32_t)ftags[i];
    for (size_t i = 0; i < noff; i++)
        off[i] = (size_t)foff[i];
    float *T = falloc(nt);
    trn_loss_soft_targets(tags, off, B, alpha, T);
    expect_close("soft targets", T, want, nt, 1e-6);

    /* alpha = 0: the identity */
    trn_loss_soft_targets(tags, off, B, 0.0f, T);
    for (int i = 0; i < B; i++)
        for (int j = 0; j < B; j++)
            assert_true(T[i * B + j] == (i == j ? 1.0f : 0.0f));
    free(T);
    free(tags);
    free(off);
    enc_st_close(st);

    /* Repeats count once; rows sum to 1.  Sets {1,2,2}, {2,1}, {1,3}:
     * J01 = 1, J02 = J12 = 1/3; alpha = 1: row 0 = (1, 1, 1/3) / (7/3). */
    int32_t t2[] = {1, 2, 2, 2, 1, 1, 3};
    size_t o2[] = {0, 3, 5, 7};
    float U[9];
    trn_loss_soft_targets(t2, o2, 3, 1.0f, U);
    float want0[3] = {3.0f / 7, 3.0f / 7, 1.0f / 7};
    expect_close("repeats", U, want0, 3, 1e-6);
    float want2[3] = {1.0f / 5, 1.0f / 5, 3.0f / 5};
    expect_close("row 2", U + 6, want2, 3, 1e-6);
}

/* Central differences of the loss, in double around float inputs. */
static double clip_loss_at(const float *a, const float *b, int B, int E, float s,
                           const float *T)
{
    float *w = falloc(trn_loss_clip_work_floats(B));
    double l = trn_loss_clip_forward(a, b, B, E, s, T, w);
    free(w);
    return l;
}

static void test_clip_finite_diff(void **state)
{
    (void)state;
    enum { B = 5, E = 7 };
    tu_rng r;
    tu_rng_seed(&r, 7);
    float a[B * E], b[B * E], T[B * B];
    tu_fill_normal(&r, a, B * E);
    tu_fill_normal(&r, b, B * E);
    tu_normalize_rows(a, B, E);
    tu_normalize_rows(b, B, E);
    int32_t tags[] = {1, 2, 2, 1, 3, 1};
    size_t off[] = {0, 2, 4, 5, 5, 6};
    trn_loss_soft_targets(tags, off, B, 0.7f, T);
    float s = logf(5.0f);
    for (int soft = 0; soft < 2; soft++) {
        const float *tg = soft ? T : NULL;
        float *w = falloc(trn_loss_clip_work_floats(B));
        float da[B * E] = {0}, db[B * E] = {0}, ds = 0;
        trn_loss_clip_forward(a, b, B, E, s, tg, w);
        trn_loss_clip_backward(a, b, B, E, s, tg, 1.0f, w, da, db, &ds);
        free(w);
        const float h = 1e-2f;
        for (int i = 0; i < B * E; i++) {
            float *x[2] = {a, b};
            float *g[2] = {da, db};
            for (int k = 0; k < 2; k++) {
                float keep = x[k][i];
                x[k][i] = keep + h;
                double lp = clip_loss_at(a, b, B, E, s, tg);
                x[k][i] = keep - h;
                double lm = clip_loss_at(a, b, B, E, s, tg);
                x[k][i] = keep;
                double fd = (lp - lm) / (2 * h);
                if (fabs(fd - g[k][i]) > 2e-3 * (1 + fabs(fd)))
                    fail_msg("soft=%d %s[%d]: analytic %.6g, finite difference %.6g", soft,
                             k ? "db" : "da", i, g[k][i], fd);
            }
        }
        double fd = (clip_loss_at(a, b, B, E, s + h, tg) - clip_loss_at(a, b, B, E, s - h, tg)) /
                    (2 * h);
        if (fabs(fd - ds) > 2e-3 * (1 + fabs(fd)))
            fail_msg("soft=%d dlog_scale: analytic %.6g, finite difference %.6g", soft, ds, fd);
    }
}

static void test_clip_edges(void **state)
{
    (void)state;
    /* B = 1: the only pair is its own target: loss 0, no gradient */
    float a[3] = {1, 0, 0}, b[3] = {0, 1, 0}, da[3] = {0}, db[3] = {0}, ds = 0;
    float w[3];
    assert_true(trn_loss_clip_forward(a, b, 1, 3, 2.0f, NULL, w) == 0.0f);
    trn_loss_clip_backward(a, b, 1, 3, 2.0f, NULL, 1.0f, w, da, db, &ds);
    for (int i = 0; i < 3; i++)
        assert_true(da[i] == 0 && db[i] == 0);
    assert_true(ds == 0);

    /* Gradients add up and scale with dloss: two calls with 0.5 = one with 1 */
    enum { B = 4, E = 5 };
    tu_rng r;
    tu_rng_seed(&r, 3);
    float x[B * E], y[B * E];
    tu_fill_normal(&r, x, B * E);
    tu_fill_normal(&r, y, B * E);
    tu_normalize_rows(x, B, E);
    tu_normalize_rows(y, B, E);
    float *work = falloc(trn_loss_clip_work_floats(B));
    float g1[B * E] = {0}, g2[B * E] = {0}, h1[B * E] = {0}, h2[B * E] = {0}, s1 = 0, s2 = 0;
    trn_loss_clip_forward(x, y, B, E, 1.0f, NULL, work);
    trn_loss_clip_backward(x, y, B, E, 1.0f, NULL, 1.0f, work, g1, h1, &s1);
    for (int k = 0; k < 2; k++) {
        trn_loss_clip_forward(x, y, B, E, 1.0f, NULL, work);
        trn_loss_clip_backward(x, y, B, E, 1.0f, NULL, 0.5f, work, g2, h2, &s2);
    }
    expect_close("accumulated da", g2, g1, B * E, 1e-6);
    expect_close("accumulated db", h2, h1, B * E, 1e-6);
    expect_close("accumulated ds", &s2, &s1, 1, 1e-6);
    /* NULL outputs are skipped */
    trn_loss_clip_forward(x, y, B, E, 1.0f, NULL, work);
    trn_loss_clip_backward(x, y, B, E, 1.0f, NULL, 1.0f, work, NULL, NULL, NULL);
    /* exp(s) = 100 exactly is inside the clamp (torch passes the gradient) */
    float s100 = logf(100.0f), d100 = 0;
    if (expf(s100) <= 100.0f) {
        trn_loss_clip_forward(x, y, B, E, s100, NULL, work);
        trn_loss_clip_backward(x, y, B, E, s100, NULL, 1.0f, work, NULL, NULL, &d100);
        assert_true(d100 != 0);
    }
    free(work);
}

/* ---- consistency --------------------------------------------------------------------------- */

static void test_consistency(void **state)
{
    (void)state;
    enc_st *st = open_fixture("loss.safetensors");
    size_t nv, ns;
    const float *vol = get(st, "cons.vol", &nv);
    const float *sl = get(st, "cons.slices", &ns);
    enum { B = 3, K = 4, E = 8 };
    assert_int_equal(nv, B * E);
    assert_int_equal(ns, B * K * E);
    float loss = trn_loss_consistency_forward(vol, sl, B, K, E);
    float *dv = falloc(nv), *dsl = falloc(ns);
    trn_loss_consistency_backward(vol, sl, B, K, E, 1.0f, dv, dsl);
    expect_close("cons.loss", &loss, get(st, "cons.loss", NULL), 1, 1e-5);
    expect_close("cons.dvol", dv, get(st, "cons.dvol", NULL), nv, 1e-5);
    expect_close("cons.dslices", dsl, get(st, "cons.dslices", NULL), ns, 1e-5);

    /* finite differences on a copy */
    float *v = falloc(nv), *s = falloc(ns);
    memcpy(v, vol, nv * sizeof *v);
    memcpy(s, sl, ns * sizeof *s);
    const float h = 1e-2f;
    for (size_t i = 0; i < nv + ns; i++) {
        float *x = i < nv ? v + i : s + (i - nv);
        float g = i < nv ? dv[i] : dsl[i - nv];
        float keep = *x;
        *x = keep + h;
        double lp = trn_loss_consistency_forward(v, s, B, K, E);
        *x = keep - h;
        double lm = trn_loss_consistency_forward(v, s, B, K, E);
        *x = keep;
        double fd = (lp - lm) / (2 * h);
        if (fabs(fd - g) > 1e-3)
            fail_msg("consistency grad %zu: analytic %.6g, finite difference %.6g", i, g, fd);
    }
    /* identical directions: loss 0; a zero mean: cos 0, no gradient */
    float one[2] = {0.6f, 0.8f}, same[4] = {0.6f, 0.8f, 0.6f, 0.8f};
    assert_true(fabsf(trn_loss_consistency_forward(one, same, 1, 2, 2)) < 1e-6f);
    float opp[4] = {1, 0, -1, 0}, g0[2] = {0}, g1[4] = {0};
    assert_true(trn_loss_consistency_forward(one, opp, 1, 2, 2) == 1.0f);
    trn_loss_consistency_backward(one, opp, 1, 2, 2, 1.0f, g0, g1);
    for (int i = 0; i < 4; i++)
        assert_true(g1[i] == 0 && (i >= 2 || g0[i] == 0));
    free(v);
    free(s);
    free(dv);
    free(dsl);
    enc_st_close(st);
}

/* ---- AdamW ----------------------------------------------------------------------------------- */

/* As PARAMS in make_train_fixtures.py. */
static const struct {
    const char *name;
    int rank;
    int64_t shape[3];
} PARAMS[] = {
    {"layer.weight", 2, {4, 3}},
    {"layer.bias", 1, {3}},
    {"norm.weight", 1, {3}},
    {"text.embeddings.word_embeddings.weight", 2, {5, 3}},
    {"vision.cls_token", 3, {1, 1, 3}},
    {"proj.weight", 2, {3, 2}},
    {"logit_scale", 0, {0}},
};
#define NPARAMS (sizeof PARAMS / sizeof PARAMS[0])
/* As LR, BETAS, EPS, WD, MAX_NORM, STEPS, WARMUP, TOTAL, FLOOR there. */
#define FX_LR 1e-2
#define FX_STEPS 12

static void fixture_table(enc_param *t)
{
    for (size_t i = 0; i < NPARAMS; i++) {
        memset(&t[i], 0, sizeof t[i]);
        t[i].name = PARAMS[i].name;
        t[i].rank = PARAMS[i].rank;
        t[i].count = 1;
        for (int d = 0; d < PARAMS[i].rank; d++) {
            t[i].shape[d] = PARAMS[i].shape[d];
            t[i].count *= (size_t)PARAMS[i].shape[d];
        }
    }
}

static trn_adamw *fixture_opt(void)
{
    enc_param t[NPARAMS];
    fixture_table(t);
    trn_adamw_opts o = TRN_ADAMW_OPTS_INIT;
    o.beta1 = 0.9;
    o.beta2 = 0.98;
    o.eps = 1e-6;
    o.weight_decay = 0.2;
    trn_adamw *opt = NULL;
    char err[256];
    if (trn_adamw_new(t, NPARAMS, &o, &opt, err, sizeof err) != ENC_OK)
        fail_msg("%s", err);
    return opt;
}

static void test_adamw_fixture(void **state)
{
    (void)state;
    enc_st *st = open_fixture("adamw.safetensors");
    trn_adamw *opt = fixture_opt();
    size_t N = trn_adamw_count(opt);
    assert_int_equal(N, 12 + 3 + 3 + 15 + 3 + 6 + 1);
    float *p = falloc(N), *g = falloc(N);
    const float *grads[NPARAMS];
    size_t cnt[NPARAMS];
    for (size_t i = 0; i < NPARAMS; i++) {
        size_t off = trn_adamw_offset(opt, i);
        const float *init = getf(st, "init.%s", PARAMS[i].name, &cnt[i]);
        memcpy(p + off, init, cnt[i] * sizeof *p);
        grads[i] = getf(st, "grad.%s", PARAMS[i].name, NULL);
        /* the default rule puts each tensor in the group the script used */
        float dec = getf(st, "decay.%s", PARAMS[i].name, NULL)[0];
        assert_int_equal(trn_adamw_decays(opt, i), dec != 0);
    }
    const float *lrs = get(st, "lr", NULL), *norms = get(st, "total_norm", NULL);
    trn_sched sc = {FX_LR, 3, 10, 0.1};
    for (int t = 0; t < FX_STEPS; t++) {
        for (size_t i = 0; i < NPARAMS; i++)
            memcpy(g + trn_adamw_offset(opt, i), grads[i] + (size_t)t * cnt[i],
                   cnt[i] * sizeof *g);
        float norm = trn_adamw_clip_grad_norm(opt, g, 1.0f);
        expect_close("total_norm", &norm, norms + t, 1, 1e-6);
        double lr = trn_lr(&sc, trn_adamw_steps(opt));
        float lrf = (float)lr;
        expect_close("lr", &lrf, lrs + t, 1, 1e-7);
        trn_adamw_step(opt, p, g, lr);
    }
    assert_int_equal(trn_adamw_steps(opt), FX_STEPS);
    for (size_t i = 0; i < NPARAMS; i++) {
        size_t n, off = trn_adamw_offset(opt, i);
        char what[128];
        const float *want = getf(st, "param.%s", PARAMS[i].name, &n);
        snprintf(what, sizeof what, "param.%s", PARAMS[i].name);
        expect_close(what, p + off, want, n, 1e-6);
        snprintf(what, sizeof what, "exp_avg.%s", PARAMS[i].name);
        expect_close(what, trn_adamw_m(opt) + off, getf(st, "exp_avg.%s", PARAMS[i].name, NULL),
                     n, 1e-6);
        snprintf(what, sizeof what, "exp_avg_sq.%s", PARAMS[i].name);
        expect_close(what, trn_adamw_v(opt) + off,
                     getf(st, "exp_avg_sq.%s", PARAMS[i].name, NULL), n, 1e-6);
    }
    free(p);
    free(g);
    trn_adamw_free(opt);
    enc_st_close(st);
}

static void test_schedule(void **state)
{
    (void)state;
    enc_st *st = open_fixture("sched.safetensors");
    /* As SCHEDULES in make_train_fixtures.py. */
    const trn_sched sc[] = {{3e-4, 5, 25, 0.05}, {1e-3, 0, 10, 0.0}, {1.0, 4, 4, 0.2}};
    for (size_t k = 0; k < sizeof sc / sizeof sc[0]; k++) {
        char name[32];
        snprintf(name, sizeof name, "sched%zu.lr", k);
        size_t n;
        const float *want = get(st, name, &n);
        for (size_t t = 0; t < n; t++) {
            float got = (float)trn_lr(&sc[k], (int64_t)t);
            if (!(fabs((double)got - want[t]) <= 1e-6 * fabs(want[t]) + 1e-12))
                fail_msg("%s[%zu]: %.9g, want %.9g", name, t, got, want[t]);
        }
    }
    /* the shape of it, exactly */
    trn_sched s = {2.0, 4, 12, 0.25};
    assert_true(trn_lr(&s, 0) == 0.0);
    assert_true(trn_lr(&s, 2) == 1.0);
    assert_true(trn_lr(&s, 4) == 2.0);
    assert_true(fabs(trn_lr(&s, 8) - 2.0 * (0.25 + 0.75 * 0.5)) < 1e-15);
    assert_true(fabs(trn_lr(&s, 12) - 0.5) < 1e-15);
    assert_true(fabs(trn_lr(&s, 1000) - 0.5) < 1e-15);
    enc_st_close(st);
}

static void test_clip_grad_norm(void **state)
{
    (void)state;
    enc_param t[2];
    memset(t, 0, sizeof t);
    t[0] = (enc_param){"a", 1, {2}, 2, NULL};
    t[1] = (enc_param){"b", 0, {0}, 1, NULL};
    trn_adamw *opt = NULL;
    assert_int_equal(trn_adamw_new(t, 2, NULL, &opt, NULL, 0), ENC_OK);
    /* |(3, 4)| = 5, |12| = 12, total 13 */
    float g[3] = {3, 4, 12};
    float n = trn_adamw_clip_grad_norm(opt, g, 1.0f);
    assert_true(n == 13.0f);
    float coef = 1.0f / (13.0f + 1e-6f);
    assert_true(g[0] == 3 * coef && g[1] == 4 * coef && g[2] == 12 * coef);
    /* under the limit: untouched */
    float h[3] = {0.3f, 0.4f, 0};
    assert_true(fabsf(trn_adamw_clip_grad_norm(opt, h, 1.0f) - 0.5f) < 1e-7f);
    assert_true(h[0] == 0.3f && h[1] == 0.4f && h[2] == 0);
    /* not finite: untouched, reported */
    float k[3] = {INFINITY, 1, 1};
    assert_true(isinf(trn_adamw_clip_grad_norm(opt, k, 1.0f)));
    assert_true(k[1] == 1 && k[2] == 1);
    trn_adamw_free(opt);

    /* bad tables and options */
    char err[256];
    t[0].count = 3;
    assert_int_equal(trn_adamw_new(t, 2, NULL, &opt, err, sizeof err), ENC_INVAL);
    assert_non_null(strstr(err, "count"));
    t[0].count = 2;
    assert_int_equal(trn_adamw_new(t, 0, NULL, &opt, err, sizeof err), ENC_INVAL);
    trn_adamw_opts o = TRN_ADAMW_OPTS_INIT;
    o.beta2 = 1.0;
    assert_int_equal(trn_adamw_new(t, 2, &o, &opt, err, sizeof err), ENC_INVAL);
    trn_adamw_free(NULL);
}

static int decay_none(const char *name, int rank, void *ctx)
{
    (void)name;
    (void)rank;
    ++*(int *)ctx;
    return 0;
}

static void test_decay_mask(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int rank, decay;
    } cases[] = {
        {"vision.blocks.0.attn.qkv.weight", 2, 1},
        {"vision.blocks.0.attn.qkv.bias", 1, 0},
        {"vision.blocks.0.norm1.weight", 1, 0},
        {"vision.patch2d.weight", 4, 1},
        {"vision.patch3d.weight", 5, 1},
        {"vision.cls_token", 3, 0},
        {"vision.pos2d", 3, 0},
        {"vision.pos3d", 3, 0},
        {"text.embeddings.word_embeddings.weight", 2, 0},
        {"text.embeddings.position_embeddings.weight", 2, 0},
        {"text.encoder.layer.0.attention.self.query.weight", 2, 1},
        {"text.encoder.layer.0.output.LayerNorm.weight", 1, 0},
        {"vision_encoder.patch_embedding.position_embeddings", 3, 0},
        {"visual.trunk.pos_embed", 3, 0},
        {"text.proj.weight", 2, 1},
        {"logit_scale", 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        if (trn_adamw_default_decay(cases[i].name, cases[i].rank, NULL) != cases[i].decay)
            fail_msg("%s: decay %d expected", cases[i].name, cases[i].decay);

    /* a callback overrides the rule, called once per tensor */
    enc_param t[NPARAMS];
    fixture_table(t);
    int calls = 0;
    trn_adamw_opts o = TRN_ADAMW_OPTS_INIT;
    o.decay = decay_none;
    o.decay_ctx = &calls;
    trn_adamw *opt;
    assert_int_equal(trn_adamw_new(t, NPARAMS, &o, &opt, NULL, 0), ENC_OK);
    assert_int_equal(calls, NPARAMS);
    for (size_t i = 0; i < NPARAMS; i++) {
        assert_int_equal(trn_adamw_decays(opt, i), 0);
        assert_string_equal(trn_adamw_name(opt, i), PARAMS[i].name);
    }
    assert_int_equal(trn_adamw_ntensors(opt), NPARAMS);
    trn_adamw_free(opt);
}

/* ---- checkpoints ---------------------------------------------------------------------------- */

static void run_steps(trn_adamw *opt, float *p, uint64_t *rng, int n)
{
    size_t N = trn_adamw_count(opt);
    float *g = falloc(N);
    trn_sched sc = {1e-2, 2, 20, 0.1};
    for (int k = 0; k < n; k++) {
        /* the "training" RNG is part of the state that must resume */
        tu_rng r;
        tu_rng_seed(&r, rng[0]);
        tu_fill_normal(&r, g, N);
        rng[0] = tu_rng_u64(&r);
        rng[1] += 1;
        trn_adamw_clip_grad_norm(opt, g, 2.0f);
        trn_adamw_step(opt, p, g, trn_lr(&sc, trn_adamw_steps(opt)));
    }
    free(g);
}

static void test_checkpoint(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    char *path = tu_path(dir, "ckpt.safetensors");
    trn_adamw *a = fixture_opt(), *b = fixture_opt();
    size_t N = trn_adamw_count(a);
    float *pa = falloc(N), *pb = falloc(N);
    tu_rng r;
    tu_rng_seed(&r, 5);
    tu_fill_normal(&r, pa, N);
    pa[1] = -0.0f; /* signs of zero survive */
    uint64_t ra[3] = {42, 0, 0xfedcba9876543210ULL}, rb[3] = {0, 0, 0};
    run_steps(a, pa, ra, 5);
    const char *hp = "{\"lr\": 0.01, \"batch\": 32, \"note\": \"caf\\u00e9 \xc3\xa9\"}";
    char err[512];
    if (trn_ckpt_write(path, a, pa, ra, 3, hp, err, sizeof err) != ENC_OK)
        fail_msg("%s", err);

    char *hpb = NULL;
    if (trn_ckpt_read(path, b, pb, rb, 3, &hpb, err, sizeof err) != ENC_OK)
        fail_msg("%s", err);
    assert_string_equal(hpb, hp);
    free(hpb);
    assert_int_equal(trn_adamw_steps(b), 5);
    assert_memory_equal(pa, pb, N * sizeof *pa);
    assert_memory_equal(trn_adamw_m(a), trn_adamw_m(b), N * sizeof(float));
    assert_memory_equal(trn_adamw_v(a), trn_adamw_v(b), N * sizeof(float));
    assert_memory_equal(ra, rb, sizeof ra);

    /* resuming gives the same bits as never stopping */
    run_steps(a, pa, ra, 7);
    run_steps(b, pb, rb, 7);
    assert_memory_equal(pa, pb, N * sizeof *pa);
    assert_memory_equal(trn_adamw_m(a), trn_adamw_m(b), N * sizeof(float));
    assert_memory_equal(trn_adamw_v(a), trn_adamw_v(b), N * sizeof(float));
    assert_int_equal(trn_adamw_steps(a), trn_adamw_steps(b));

    /* the file also loads as weights: parameters under their own names */
    enc_st *st;
    assert_int_equal(enc_st_open(path, &st, err, sizeof err), ENC_OK);
    enc_st_info info;
    assert_int_equal(enc_st_info_get(st, "layer.weight", &info), ENC_OK);
    assert_int_equal(info.rank, 2);
    assert_int_equal(enc_st_info_get(st, "adamw.m.layer.weight", &info), ENC_OK);
    assert_int_equal(enc_st_info_get(st, "logit_scale", &info), ENC_OK);
    assert_int_equal(info.rank, 0);
    enc_st_close(st);

    /* failures write nothing */
    float *pc = falloc(N);
    uint64_t rc4[4] = {0};
    int64_t before = trn_adamw_steps(b);
    assert_int_equal(trn_ckpt_read(path, b, pc, rc4, 4, NULL, err, sizeof err), ENC_SHAPE);
    assert_int_equal(trn_adamw_steps(b), before);
    for (size_t i = 0; i < N; i++)
        assert_true(pc[i] == 0);
    char *missing = tu_path(dir, "nope.safetensors");
    assert_int_equal(trn_ckpt_read(missing, b, pc, rb, 3, NULL, err, sizeof err), ENC_IO);
    free(missing);
    /* a model with another shape */
    enc_param t[NPARAMS];
    fixture_table(t);
    t[0].shape[0] = 2;
    t[0].count = 6;
    trn_adamw *c;
    assert_int_equal(trn_adamw_new(t, NPARAMS, NULL, &c, NULL, 0), ENC_OK);
    assert_int_equal(trn_ckpt_read(path, c, pc, rb, 3, NULL, err, sizeof err), ENC_SHAPE);
    assert_non_null(strstr(err, "layer.weight"));
    trn_adamw_free(c);
    /* a model with a tensor the file lacks */
    t[0].shape[0] = 4;
    t[0].count = 12;
    t[1].name = "layer.extra";
    assert_int_equal(trn_adamw_new(t, NPARAMS, NULL, &c, NULL, 0), ENC_OK);
    assert_int_equal(trn_ckpt_read(path, c, pc, rb, 3, NULL, err, sizeof err), ENC_MISSING);
    assert_non_null(strstr(err, "layer.extra"));
    trn_adamw_free(c);
    /* hyper-parameters must be JSON; no RNG is fine */
    assert_int_equal(trn_ckpt_write(path, a, pa, NULL, 0, "{lr:", err, sizeof err),
                     ENC_INVAL);
    assert_int_equal(trn_ckpt_write(path, a, pa, NULL, 0, NULL, err, sizeof err), ENC_OK);
    char *hpd = NULL;
    assert_int_equal(trn_ckpt_read(path, b, pb, NULL, 0, &hpd, err, sizeof err), ENC_OK);
    assert_string_equal(hpd, "{}");
    free(hpd);
    assert_int_equal(trn_adamw_steps(b), trn_adamw_steps(a));

    free(pa);
    free(pb);
    free(pc);
    trn_adamw_free(a);
    trn_adamw_free(b);
    free(path);
    tu_rmtree(dir);
    free(dir);
}

/* ---- retrieval metrics ------------------------------------------------------------------------ */

static int close_to(double got, double want)
{
    return fabs(got - want) < 1e-9;
}

/* Four gallery items and four queries on the unit circle:
 *   g0 (1,0) pair 10 {1}   g1 (.8,.6) pair 11 {1,2}   g2 (0,1) pair 12 {2,1}
 *   g3 (-1,0) pair 13 {}
 *   q0 (1,0) pair 11 {2,1}: ranking g0 g1 g2 g3; match at 2; relevant g1 g2
 *      at 2, 3: AP = (1/2 + 2/3) / 2 = 7/12, P@10 = 2/4
 *   q1 (0,1) pair 13 {}: scores 0 .6 1 0: g2 g1 g0 g3 (the tie to the lower
 *      index); match at 4; relevant g3 at 4: AP 1/4, P@10 1/4
 *   q2 (.6,.8) pair 99 {7}: no match, nothing relevant: P@10 0, no AP
 *   q3 (-1,0) pair 13 {} : match at 1; g3 at 1: AP 1, P@10 1/4
 * recall@1 = 1/3 (q0, q1, q3), @5 = @10 = 1; P@10 = 1/4; mAP = 11/18.
 * Chance (4 candidates): recall@1 = 1/4, @5 = 1; P@10 = mean R/4 = 1/4;
 * AP: q0 (n 4, R 2) 49/72, q1 and q3 (R 1) H_4 / 4 = 25/48; mAP = 31/54. */
static void test_eval_known(void **state)
{
    (void)state;
    const float g[8] = {1, 0, 0.8f, 0.6f, 0, 1, -1, 0};
    const float q[8] = {1, 0, 0, 1, 0.6f, 0.8f, -1, 0};
    const int64_t gp[4] = {10, 11, 12, 13}, qp[4] = {11, 13, 99, 13};
    const int32_t gl[] = {1, 1, 2, 2, 1};
    const size_t go[] = {0, 1, 3, 5, 5};
    const int32_t ql[] = {2, 1, 7};
    const size_t qo[] = {0, 2, 2, 3, 3};
    trn_eval_set Q = {q, 4, qp, NULL, ql, qo}, G = {g, 4, gp, NULL, gl, go};
    trn_eval_metrics m, c;
    char err[256];
    assert_int_equal(trn_eval_retrieval(&Q, &G, 2, &m, &c, err, sizeof err), ENC_OK);
    assert_int_equal(m.n_queries, 4);
    assert_int_equal(m.n_recall, 3);
    assert_int_equal(m.n_map, 3);
    assert_true(close_to(m.recall[0], 1.0 / 3));
    assert_true(close_to(m.recall[1], 1.0) && close_to(m.recall[2], 1.0));
    assert_true(close_to(m.label_p10, 0.25));
    assert_true(close_to(m.map, 11.0 / 18));
    assert_true(close_to(c.recall[0], 0.25));
    assert_true(close_to(c.recall[1], 1.0) && close_to(c.recall[2], 1.0));
    assert_true(close_to(c.label_p10, 0.25));
    assert_true(close_to(c.map, 31.0 / 54));
    assert_int_equal(c.n_recall, 3);

    /* no labels: label metrics 0; recall unchanged */
    trn_eval_set Q2 = {q, 4, qp, NULL, NULL, NULL}, G2 = {g, 4, gp, NULL, NULL, NULL};
    assert_int_equal(trn_eval_retrieval(&Q2, &G2, 2, &m, NULL, NULL, 0), ENC_OK);
    assert_true(close_to(m.recall[0], 1.0 / 3));
    assert_true(m.label_p10 == 0 && m.map == 0 && m.n_map == 0);
    /* labels on one side only, bad E */
    assert_int_equal(trn_eval_retrieval(&Q, &G2, 2, &m, NULL, err, sizeof err), ENC_INVAL);
    assert_int_equal(trn_eval_retrieval(&Q, &G, 0, &m, NULL, err, sizeof err), ENC_INVAL);
    /* an empty gallery: no queries count */
    trn_eval_set G0 = {g, 0, gp, NULL, gl, go};
    assert_int_equal(trn_eval_retrieval(&Q, &G0, 2, &m, &c, NULL, 0), ENC_OK);
    assert_int_equal(m.n_queries, 0);
    assert_true(m.recall[0] == 0 && m.map == 0);
}

/* Image-to-image: the gallery is the query set, and a query's own item is
 * left out.  Items 0, 1 are one pair (a rescan), 2 and 3 alone. */
static void test_eval_self(void **state)
{
    (void)state;
    const float x[8] = {1, 0, 0.96f, 0.28f, 0, 1, -1, 0};
    const int64_t pair[4] = {1, 1, 2, 3}, item[4] = {100, 101, 102, 103};
    const int32_t lab[] = {5, 5, 6, 5};
    const size_t off[] = {0, 1, 2, 3, 4};
    trn_eval_set S = {x, 4, pair, item, lab, off};
    trn_eval_metrics m, c;
    assert_int_equal(trn_eval_retrieval(&S, &S, 2, &m, &c, NULL, 0), ENC_OK);
    /* every query has 3 candidates; only 0 and 1 have a match, each other's
     * nearest: recall@1 = 1 */
    assert_int_equal(m.n_queries, 4);
    assert_int_equal(m.n_recall, 2);
    assert_true(close_to(m.recall[0], 1.0));
    /* chance recall@1 with 3 candidates and one match */
    assert_true(close_to(c.recall[0], 1.0 / 3));
    /* labels {5}: items 0, 1, 3.  q0: candidates g1 (.96) g2 (0) g3 (-1):
     * relevant at 1 and 3: AP (1 + 2/3)/2 = 5/6, P = 2/3.  q1: g0 (.96),
     * g2 (.28), g3 (-.96): relevant at 1, 3: 5/6, 2/3.  q3: g2 (0) g1 (-.96)
     * g0 (-1): relevant at 2, 3: (1/2 + 2/3)/2 = 7/12, 2/3.  q2 {6}: none. */
    assert_int_equal(m.n_map, 3);
    assert_true(close_to(m.map, (5.0 / 6 + 5.0 / 6 + 7.0 / 12) / 3));
    assert_true(close_to(m.label_p10, (2.0 / 3 * 3 + 0) / 4));
    /* without item ids the query finds itself first */
    trn_eval_set S2 = {x, 4, pair, NULL, lab, off};
    assert_int_equal(trn_eval_retrieval(&S2, &S2, 2, &m, NULL, NULL, 0), ENC_OK);
    assert_int_equal(m.n_recall, 4);
    assert_true(close_to(m.recall[0], 1.0));
}

/* The oracle's ceiling against the oracle itself: each query ranked by
 * trn_eval_retrieval over a one-dimensional gallery scored 2 + u for items
 * whose visible labels equal the query's and u otherwise (u uniform), so
 * the group comes first in a random order; the mean label P@10 over many
 * draws must meet trn_eval_label_ceiling's expectation.  Labels: 0 normal,
 * 1 and 2 two nodules (hidden with 0), 3 and 4 seen findings. */
static void test_eval_ceiling(void **state)
{
    (void)state;
    enum { NG = 60, NQ = 8, TRIALS = 3000 };
    static const int32_t sets[][3] = {{0, -1, -1}, {1, -1, -1}, {2, -1, -1}, {1, 2, -1},
                                      {3, -1, -1}, {3, 1, -1},  {4, -1, -1}, {3, 4, 2}};
    const int nsets = (int)(sizeof sets / sizeof *sets);
    int32_t lab[NG * 3];
    size_t off[NG + 1] = {0};
    int64_t pair[NG], item[NG];
    int setof[NG];
    uint64_t r = 42;
    for (int j = 0; j < NG; j++) {
        r = r * 6364136223846793005ULL + 1442695040888963407ULL;
        setof[j] = (int)((r >> 33) % (uint64_t)nsets);
        size_t at = off[j];
        for (int k = 0; k < 3 && sets[setof[j]][k] >= 0; k++)
            lab[at++] = sets[setof[j]][k];
        off[j + 1] = at;
        pair[j] = j;
        item[j] = 1000 + j;
    }
    const unsigned char hidden[5] = {1, 1, 1, 0, 0};
    /* visible set: the set without 0, 1, 2, as a bit mask */
    int vis[NG];
    for (int j = 0; j < NG; j++) {
        vis[j] = 0;
        for (size_t k = off[j]; k < off[j + 1]; k++)
            vis[j] |= lab[k] >= 3 ? 1 << lab[k] : 0;
    }
    for (int with_self = 0; with_self < 2; with_self++) {
        /* queries: the gallery's first NQ items (their own item left out
         * when with_self) */
        trn_eval_set G = {NULL, NG, pair, with_self ? item : NULL, lab, off};
        trn_eval_set Q = {NULL, NQ, pair, with_self ? item : NULL, lab, off};
        double want, perfect;
        char err[256];
        assert_int_equal(trn_eval_label_ceiling(&Q, &G, hidden, 5, &want, err, sizeof err),
                         ENC_OK);
        assert_int_equal(trn_eval_label_ceiling(&Q, &G, NULL, 0, &perfect, err, sizeof err),
                         ENC_OK);
        /* perfect: min(exact, 10) / 10 per query, by counting */
        double ref = 0;
        for (int i = 0; i < NQ; i++) {
            int exact = 0;
            for (int j = 0; j < NG; j++)
                exact += setof[j] == setof[i] && !(with_self && j == i);
            ref += (exact < 10 ? exact : 10) / 10.0;
        }
        assert_true(close_to(perfect, ref / NQ));
        assert_true(want < perfect); /* nodules unseen cost something here */
        double sum = 0;
        float gq[NG], one = 1;
        for (int t = 0; t < TRIALS; t++)
            for (int i = 0; i < NQ; i++) {
                for (int j = 0; j < NG; j++) {
                    r = r * 6364136223846793005ULL + 1442695040888963407ULL;
                    gq[j] = (float)((r >> 40) / 16777216.0) + (vis[j] == vis[i] ? 2.0f : 0.0f);
                }
                trn_eval_set G1 = G, Q1 = {&one, 1, pair + i, with_self ? item + i : NULL,
                                          lab, NULL};
                size_t qoff[2] = {0, off[i + 1] - off[i]};
                Q1.labels = lab + off[i];
                Q1.label_off = qoff;
                G1.emb = gq;
                trn_eval_metrics m;
                assert_int_equal(trn_eval_retrieval(&Q1, &G1, 1, &m, NULL, NULL, 0), ENC_OK);
                sum += m.label_p10;
            }
        assert_true(fabs(sum / (TRIALS * NQ) - want) < 0.01);
    }
    /* labels on one side only */
    trn_eval_set A = {NULL, 2, pair, NULL, lab, off}, B = {NULL, 2, pair, NULL, NULL, NULL};
    double p = 1;
    assert_int_equal(trn_eval_label_ceiling(&A, &B, NULL, 0, &p, NULL, 0), ENC_INVAL);
    assert_true(p == 0);
}

/* A straightforward reference on random data crossing the query block. */
static void test_eval_random(void **state)
{
    (void)state;
    enum { NQ = 150, NG = 70, E = 6 };
    tu_rng r;
    tu_rng_seed(&r, 11);
    float *q = falloc(NQ * E), *g = falloc(NG * E);
    tu_fill_normal(&r, q, NQ * E);
    tu_fill_normal(&r, g, NG * E);
    tu_normalize_rows(q, NQ, E);
    tu_normalize_rows(g, NG, E);
    int64_t qp[NQ], gp[NG];
    int32_t ql[NQ], gl[NG];
    size_t qo[NQ + 1], go[NG + 1];
    for (int i = 0; i < NQ; i++) {
        qp[i] = (int64_t)tu_rng_below(&r, NG + 10); /* some have no match */
        ql[i] = (int32_t)tu_rng_below(&r, 4);
        qo[i] = (size_t)i;
    }
    for (int j = 0; j < NG; j++) {
        gp[j] = j % 60; /* pairs 0..9 have two gallery items */
        gl[j] = (int32_t)tu_rng_below(&r, 4);
        go[j] = (size_t)j;
    }
    qo[NQ] = NQ;
    go[NG] = NG;
    trn_eval_set Q = {q, NQ, qp, NULL, ql, qo}, G = {g, NG, gp, NULL, gl, go};
    trn_eval_metrics m, c;
    assert_int_equal(trn_eval_retrieval(&Q, &G, E, &m, &c, NULL, 0), ENC_OK);

    const size_t ks[3] = {1, 5, 10};
    double rec[3] = {0}, p10 = 0, map = 0, crec[3] = {0}, cp10 = 0, cmap = 0;
    int nrec = 0, nmap = 0;
    for (int i = 0; i < NQ; i++) {
        float s[NG];
        for (int j = 0; j < NG; j++)
            s[j] = tu_dot(q + i * E, g + j * E, E);
        /* rank of j: 1 + items scoring higher */
        int first = 0, R = 0, top = 0, m_ = 0;
        double apsum = 0;
        int rank[NG];
        for (int j = 0; j < NG; j++) {
            rank[j] = 1;
            for (int k = 0; k < NG; k++)
                rank[j] += s[k] > s[j];
        }
        for (int j = 0; j < NG; j++) {
            if (gp[j] == qp[i]) {
                m_++;
                if (first == 0 || rank[j] < first)
                    first = rank[j];
            }
            if (gl[j] == ql[i]) {
                R++;
                int above = 0;
                for (int k = 0; k < NG; k++)
                    above += gl[k] == ql[i] && rank[k] <= rank[j];
                apsum += (double)above / rank[j];
                top += rank[j] <= 10;
            }
        }
        if (m_ > 0) {
            nrec++;
            for (int k = 0; k < 3; k++) {
                rec[k] += first <= (int)ks[k];
                crec[k] += trn_eval_chance_recall(NG, (size_t)m_, ks[k]);
            }
        }
        p10 += top / 10.0;
        cp10 += (double)R / NG;
        if (R > 0) {
            nmap++;
            map += apsum / R;
            cmap += trn_eval_chance_ap(NG, (size_t)R);
        }
    }
    assert_int_equal(m.n_recall, nrec);
    assert_int_equal(m.n_map, nmap);
    for (int k = 0; k < 3; k++) {
        assert_true(close_to(m.recall[k], rec[k] / nrec));
        assert_true(close_to(c.recall[k], crec[k] / nrec));
    }
    assert_true(close_to(m.label_p10, p10 / NQ));
    assert_true(close_to(m.map, map / nmap));
    assert_true(close_to(c.label_p10, cp10 / NQ));
    assert_true(close_to(c.map, cmap / nmap));
    free(q);
    free(g);
}

/* The chance formulas against exhaustive enumeration (small n) and seeded
 * shuffles (larger n). */
/* The mirror loss: by hand on one row, against finite differences on
 * random rows, and rows left out by use. */
static void test_side_loss(void **state)
{
    (void)state;
    /* a = p: z = s (n . a - 1); with n orthogonal to a, z = -s */
    float a1[2] = {1, 0}, p1[2] = {1, 0}, n1[2] = {0, 1};
    float l1 = trn_loss_side_forward(a1, p1, n1, NULL, 1, 2, 2.0f);
    assert_float_equal(l1, log1p(exp(-2.0)), 1e-6);
    enum { B = 5, E = 6 };
    float a[B * E], p[B * E], n[B * E];
    tu_rng r;
    tu_rng_seed(&r, 3);
    tu_fill_normal(&r, a, B * E);
    tu_fill_normal(&r, p, B * E);
    tu_fill_normal(&r, n, B * E);
    tu_normalize_rows(a, B, E);
    tu_normalize_rows(p, B, E);
    tu_normalize_rows(n, B, E);
    const unsigned char use[B] = {1, 0, 1, 1, 0};
    float da[B * E] = {0}, dp[B * E] = {0}, dn[B * E] = {0};
    const float sc = 7.5f, w = 0.7f;
    trn_loss_side_backward(a, p, n, use, B, E, sc, w, da, dp, dn);
    float *x[3] = {a, p, n}, *g[3] = {da, dp, dn};
    const float h = 1e-3f;
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < B * E; i++) {
            float keep = x[k][i];
            x[k][i] = keep + h;
            double lp = trn_loss_side_forward(a, p, n, use, B, E, sc);
            x[k][i] = keep - h;
            double lm = trn_loss_side_forward(a, p, n, use, B, E, sc);
            x[k][i] = keep;
            double fd = w * (lp - lm) / (2 * h);
            if (fabs(fd - g[k][i]) > 2e-3)
                fail_msg("side loss grad %d/%d: analytic %.6g, finite difference %.6g", k, i,
                         g[k][i], fd);
            if (!use[i / E])
                assert_true(g[k][i] == 0.0f);
        }
    /* no row used: 0, no gradient */
    const unsigned char none[B] = {0};
    assert_true(trn_loss_side_forward(a, p, n, none, B, E, sc) == 0.0f);
    float z[B * E] = {0};
    trn_loss_side_backward(a, p, n, none, B, E, sc, 1.0f, z, NULL, NULL);
    for (int i = 0; i < B * E; i++)
        assert_true(z[i] == 0.0f);
}

/* Precision at k against a relevance mask, by hand: 2-d points on a
 * circle, the query at angle 0. */
static void test_eval_precision_at(void **state)
{
    (void)state;
    enum { N = 6 };
    /* scores (cosines with q = (1, 0)): 1, 0.8, 0.6, 0.6, -0.2, -1 */
    const float g[N * 2] = {1, 0, 0.8f, 0.6f, 0.6f, 0.8f, 0.6f, -0.8f, -0.2f, 0.98f, -1, 0};
    const float q[2] = {1, 0};
    const unsigned char rel[N] = {1, 0, 0, 1, 1, 0};
    assert_float_equal(trn_eval_precision_at(q, g, N, 2, rel, 1), 1.0, 1e-12);
    assert_float_equal(trn_eval_precision_at(q, g, N, 2, rel, 2), 0.5, 1e-12);
    /* the tie at 0.6 goes to the lower index (2, not relevant) */
    assert_float_equal(trn_eval_precision_at(q, g, N, 2, rel, 3), 1.0 / 3, 1e-12);
    assert_float_equal(trn_eval_precision_at(q, g, N, 2, rel, 4), 0.5, 1e-12);
    assert_float_equal(trn_eval_precision_at(q, g, N, 2, rel, 10), 0.5, 1e-12); /* k > n */
    assert_float_equal(trn_eval_precision_at(q, g, 0, 2, rel, 10), 0.0, 1e-12);
}

/* AUC: perfect, reversed, ties as half, one class empty, and agreement
 * with counting every (positive, negative) pair. */
static void test_eval_auc(void **state)
{
    (void)state;
    const float s[4] = {0.9f, 0.8f, 0.1f, 0.2f};
    const unsigned char good[4] = {1, 1, 0, 0}, bad[4] = {0, 0, 1, 1}, none[4] = {0};
    assert_float_equal(trn_eval_auc(s, good, 4), 1.0, 1e-12);
    assert_float_equal(trn_eval_auc(s, bad, 4), 0.0, 1e-12);
    assert_true(isnan(trn_eval_auc(s, none, 4)));
    const float tie[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    assert_float_equal(trn_eval_auc(tie, good, 4), 0.5, 1e-12);

    enum { N = 300 };
    float r[N];
    unsigned char pos[N];
    tu_rng rng;
    tu_rng_seed(&rng, 17);
    for (int i = 0; i < N; i++) {
        pos[i] = tu_rng_below(&rng, 3) == 0;
        /* a coarse score with many ties, shifted for the positives */
        r[i] = (float)(int)(4 * tu_rng_normal(&rng) + (pos[i] ? 3 : 0));
    }
    double wins = 0, pairs = 0;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++)
            if (pos[i] && !pos[j]) {
                pairs++;
                wins += r[i] > r[j] ? 1 : r[i] == r[j] ? 0.5 : 0;
            }
    assert_float_equal(trn_eval_auc(r, pos, N), wins / pairs, 1e-12);
}

static void test_eval_chance(void **state)
{
    (void)state;
    /* n = 6: every subset of positions for the R relevant / m matching items */
    for (size_t R = 1; R <= 6; R++) {
        double ap = 0, rec[7] = {0};
        int cnt = 0;
        for (unsigned mask = 0; mask < 64; mask++) {
            if ((size_t)__builtin_popcount(mask) != R)
                continue;
            cnt++;
            double s = 0;
            int seen = 0, first = 0;
            for (int k = 0; k < 6; k++) {
                if (mask & (1u << k)) {
                    seen++;
                    s += (double)seen / (k + 1);
                    if (first == 0)
                        first = k + 1;
                }
            }
            ap += s / (double)R;
            for (int k = 1; k <= 6; k++)
                rec[k] += first <= k;
        }
        assert_true(close_to(trn_eval_chance_ap(6, R), ap / cnt));
        for (size_t k = 1; k <= 6; k++)
            assert_true(close_to(trn_eval_chance_recall(6, R, k), rec[k] / cnt));
    }
    assert_true(trn_eval_chance_recall(6, 0, 3) == 0);
    assert_true(trn_eval_chance_recall(6, 2, 10) == 1);
    assert_true(trn_eval_chance_ap(1, 1) == 1);

    /* n = 40, R = 3: 20000 seeded shuffles agree to 3.5 standard errors */
    enum { N = 40, RR = 3, TRIALS = 20000 };
    tu_rng r;
    tu_rng_seed(&r, 2024);
    int perm[N];
    double ap = 0, hit5 = 0;
    for (int t = 0; t < TRIALS; t++) {
        for (int i = 0; i < N; i++)
            perm[i] = i;
        for (int i = N - 1; i > 0; i--) {
            int j = (int)tu_rng_below(&r, (uint64_t)i + 1);
            int x = perm[i];
            perm[i] = perm[j];
            perm[j] = x;
        }
        double s = 0;
        int seen = 0, first = 0;
        for (int k = 0; k < N; k++) {
            if (perm[k] < RR) { /* items 0..RR-1 are the relevant ones */
                seen++;
                s += (double)seen / (k + 1);
                if (first == 0)
                    first = k + 1;
            }
        }
        ap += s / RR;
        hit5 += first <= 5;
    }
    double p = trn_eval_chance_recall(N, RR, 5);
    assert_true(fabs(hit5 / TRIALS - p) < 3.5 * sqrt(p * (1 - p) / TRIALS));
    assert_true(fabs(ap / TRIALS - trn_eval_chance_ap(N, RR)) < 0.005);
}

/* ---- vocabulary -------------------------------------------------------------------------------- */

static const char *const FINDINGS[] = {"effusion",    "nodule",       "consolidation",
                                       "atelectasis", "pneumothorax", "cardiomegaly",
                                       "opacity",     "mass"};
static const char *const SIDES[] = {"left", "right", "bilateral"};
static const char *const LOBES[] = {"upper", "middle", "lower"};

/* n synthetic report sentences, deterministic. */
static char **make_corpus(size_t n, uint64_t seed)
{
    tu_rng r;
    tu_rng_seed(&r, seed);
    char **t = calloc(n, sizeof *t);
    assert_non_null(t);
    for (size_t i = 0; i < n; i++) {
        char buf[512];
        const char *f = FINDINGS[tu_rng_below(&r, 8)];
        const char *s = SIDES[tu_rng_below(&r, 3)];
        const char *l = LOBES[tu_rng_below(&r, 3)];
        int mm = 3 + (int)tu_rng_below(&r, 20);
        switch (tu_rng_below(&r, 4)) {
        case 0:
            snprintf(buf, sizeof buf, "No %s. No pleural effusion.", f);
            break;
        case 1:
            snprintf(buf, sizeof buf, "A %d mm %s in the %s %s lobe (stable).", mm, f, s, l);
            break;
        case 2:
            snprintf(buf, sizeof buf, "FINDINGS: %s %s, %dmm; nodule-like opacity.", s, f, mm);
            break;
        default:
            snprintf(buf, sizeof buf, "Impression:\t%s %s in %s lobe\n", f, s, l);
            break;
        }
        t[i] = strdup(buf);
        assert_non_null(t[i]);
    }
    return t;
}

static void free_corpus(char **t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(t[i]);
    free(t);
}

static enc_tok *load_vocab(char **tok, size_t ntok, const char *dir)
{
    char *path = tu_path(dir, "vocab.txt");
    char err[512];
    if (trn_vocab_write(path, (const char *const *)tok, ntok, err, sizeof err) != ENC_OK)
        fail_msg("%s", err);
    enc_tok *t = NULL;
    if (enc_tok_load(path, NULL, &t, err, sizeof err) != ENC_OK)
        fail_msg("%s", err);
    free(path);
    return t;
}

/* Encodes text and fails on any [UNK]; returns the number of real tokens
 * between [CLS] and [SEP]. */
static size_t expect_no_unk(const enc_tok *t, const char *text)
{
    enum { L = 512 };
    int32_t ids[L], mask[L];
    size_t n;
    char err[256];
    if (enc_tok_encode(t, text, L, ids, mask, &n, err, sizeof err) != ENC_OK)
        fail_msg("%s", err);
    int32_t unk = enc_tok_id(t, "[UNK]");
    for (size_t i = 0; i < n; i++)
        if (ids[i] == unk)
            fail_msg("[UNK] at token %zu of \"%s\"", i, text);
    return n - 2;
}

/* The example of HF's course: hug x10, pug x5, pun x12, bun x4, hugs x5.
 * Counts h 15, ##u 36, ##g 20, p 17, ##n 16, b 4, ##s 5; every pair scores
 * 1/36 except (##g, ##s) = 5 / (20 * 5) = 1/20: "##gs" first.  Then all
 * pairs tie at 1/36 and the higher count wins: (p, ##u) 17 -> "pu". */
static void test_vocab_merges(void **state)
{
    (void)state;
    const char *words[] = {"hug", "pug", "pun", "bun", "hugs"};
    const int reps[] = {10, 5, 12, 4, 5};
    char *texts[36];
    size_t n = 0;
    for (int w = 0; w < 5; w++)
        for (int k = 0; k < reps[w]; k++)
            texts[n++] = (char *)words[w];
    trn_vocab_opts o = {1, 1, 0};
    char **tok;
    size_t ntok;
    assert_int_equal(trn_vocab_build((const char *const *)texts, n, 14, &o, &tok, &ntok), ENC_OK);
    const char *want[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "b",    "h",
                          "p",     "##g",   "##n",   "##s",   "##u",    "##gs", "pu"};
    assert_int_equal(ntok, 14);
    for (size_t i = 0; i < ntok; i++)
        assert_string_equal(tok[i], want[i]);
    trn_vocab_free(tok, ntok);

    /* with room, merging goes on until every word is one token */
    assert_int_equal(trn_vocab_build((const char *const *)texts, n, 100, &o, &tok, &ntok),
                     ENC_OK);
    for (int w = 0; w < 5; w++) {
        size_t i = 0;
        while (i < ntok && strcmp(tok[i], words[w]) != 0)
            i++;
        if (i == ntok)
            fail_msg("\"%s\" is not a token", words[w]);
    }
    assert_true(ntok < 100); /* it stopped: no pair left */
    trn_vocab_free(tok, ntok);
}

static void test_vocab_corpus(void **state)
{
    (void)state;
    enum { N = 400 };
    char **texts = make_corpus(N, 77);
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    char **tok, **tok2;
    size_t ntok, ntok2;
    assert_int_equal(trn_vocab_build((const char *const *)texts, N, 1000, NULL, &tok, &ntok),
                     ENC_OK);
    assert_true(ntok <= 1000);
    assert_string_equal(tok[0], "[PAD]");
    assert_string_equal(tok[1], "[UNK]");
    assert_string_equal(tok[2], "[CLS]");
    assert_string_equal(tok[3], "[SEP]");
    assert_string_equal(tok[4], "[MASK]");
    /* deterministic, even in the order of the texts (only word counts
     * matter): the corpus reversed gives the same list */
    for (size_t i = 0; i < N / 2; i++) {
        char *x = texts[i];
        texts[i] = texts[N - 1 - i];
        texts[N - 1 - i] = x;
    }
    assert_int_equal(trn_vocab_build((const char *const *)texts, N, 1000, NULL, &tok2, &ntok2),
                     ENC_OK);
    assert_int_equal(ntok, ntok2);
    for (size_t i = 0; i < ntok; i++)
        assert_string_equal(tok[i], tok2[i]);
    trn_vocab_free(tok2, ntok2);
    for (size_t i = 0; i < ntok; i++)
        for (size_t j = i + 1; j < ntok; j++)
            if (strcmp(tok[i], tok[j]) == 0)
                fail_msg("token \"%s\" twice", tok[i]);

    enc_tok *t = load_vocab(tok, ntok, dir);
    assert_int_equal(enc_tok_vocab_size(t), ntok);
    assert_int_equal(enc_tok_id(t, "[PAD]"), 0);
    for (size_t i = 0; i < N; i++)
        expect_no_unk(t, texts[i]);
    /* common words are single tokens, whatever their case */
    assert_true(enc_tok_id(t, "effusion") >= 0);
    assert_true(enc_tok_id(t, "nodule") >= 0);
    assert_int_equal(expect_no_unk(t, "effusion"), 1);
    assert_int_equal(expect_no_unk(t, "Nodule"), 1);
    assert_int_equal(expect_no_unk(t, "EFFUSION"), 1);
    /* ASCII the corpus never had still has no [UNK] (ascii_alphabet) */
    expect_no_unk(t, "Zygomatic fracture, 4/5 ~ 80% {query} #7 @home `x` |q|");
    tu_rng r;
    tu_rng_seed(&r, 9);
    for (int k = 0; k < 200; k++) {
        char s[300];
        size_t len = 1 + tu_rng_below(&r, 250), run = 0;
        for (size_t i = 0; i < len; i++) {
            char c = (char)(1 + tu_rng_below(&r, 127));
            if (++run > 60) { /* keep words under 100 code points */
                c = ' ';
                run = 0;
            }
            s[i] = c;
        }
        s[len] = '\0';
        expect_no_unk(t, s);
    }
    enc_tok_free(t);
    trn_vocab_free(tok, ntok);

    /* The pre-tokenizer agrees with the tokenizer's on any ASCII: built
     * from random ASCII (controls, tabs, punctuation, capitals, specials)
     * with no alphabet padding and no size limit, the vocabulary holds every
     * word of its texts whole.  A character split differently (dropped vs.
     * space, punctuation vs. letter) would leave the tokenizer a word that
     * is not a token. */
    enum { NR = 300 };
    char **rt = calloc(NR, sizeof *rt);
    assert_non_null(rt);
    for (size_t k = 0; k < NR; k++) {
        size_t len = 1 + tu_rng_below(&r, 120), run = 0;
        rt[k] = malloc(len + 8);
        assert_non_null(rt[k]);
        for (size_t i = 0; i < len; i++) {
            char c = (char)(1 + tu_rng_below(&r, 127));
            if (++run > 60) {
                c = ' ';
                run = 0;
            }
            rt[k][i] = c;
        }
        rt[k][len] = '\0';
        if (k % 10 == 0)
            strcat(rt[k], "[SEP]a");
    }
    trn_vocab_opts ro = {1, 1, 0};
    assert_int_equal(trn_vocab_build((const char *const *)rt, NR, 100000, &ro, &tok, &ntok),
                     ENC_OK);
    t = load_vocab(tok, ntok, dir);
    for (size_t k = 0; k < NR; k++) {
        /* with no limit every word was merged whole, so the tokenizer must
         * find each of its words as one token: no "##" piece at all */
        enum { L = 512 };
        int32_t ids[L], mask[L];
        size_t n;
        assert_int_equal(enc_tok_encode(t, rt[k], L, ids, mask, &n, NULL, 0), ENC_OK);
        for (size_t i = 1; i + 1 < n; i++) {
            const char *piece = enc_tok_token(t, ids[i]);
            if (ids[i] == 1 || strncmp(piece, "##", 2) == 0)
                fail_msg("text %zu: token %zu is \"%s\"", k, i, piece);
        }
    }
    enc_tok_free(t);
    trn_vocab_free(tok, ntok);
    free_corpus(rt, NR);

    /* a small vocabulary: fewer merges, still no [UNK] */
    assert_int_equal(trn_vocab_build((const char *const *)texts, N, 140, NULL, &tok, &ntok),
                     ENC_OK);
    assert_int_equal(ntok, 140);
    t = load_vocab(tok, ntok, dir);
    for (size_t i = 0; i < N; i++)
        expect_no_unk(t, texts[i]);
    enc_tok_free(t);
    trn_vocab_free(tok, ntok);

    /* cased: capitals are kept and tokenize with a cased tokenizer */
    trn_vocab_opts o = TRN_VOCAB_OPTS_INIT;
    o.lower_case = 0;
    assert_int_equal(trn_vocab_build((const char *const *)texts, N, 1000, &o, &tok, &ntok),
                     ENC_OK);
    char *path = tu_path(dir, "vocab.txt");
    assert_int_equal(trn_vocab_write(path, (const char *const *)tok, ntok, NULL, 0), ENC_OK);
    enc_tok_opts to = ENC_TOK_OPTS_INIT;
    to.lower_case = 0;
    assert_int_equal(enc_tok_load(path, &to, &t, NULL, 0), ENC_OK);
    for (size_t i = 0; i < N; i++)
        expect_no_unk(t, texts[i]);
    assert_true(enc_tok_id(t, "FINDINGS") >= 0);
    enc_tok_free(t);
    trn_vocab_free(tok, ntok);
    free(path);

    tu_rmtree(dir);
    free(dir);
    free_corpus(texts, N);
}

static void test_vocab_edges(void **state)
{
    (void)state;
    char **tok;
    size_t ntok;
    /* invalid UTF-8 (an overlong '/') */
    const char *bad[] = {"fine", "bad \xc0\xaf here"};
    assert_int_equal(trn_vocab_build(bad, 2, 100, NULL, &tok, &ntok), ENC_INVAL);
    /* no texts: the specials and the ASCII alphabet */
    assert_int_equal(trn_vocab_build(NULL, 0, 10, NULL, &tok, &ntok), ENC_OK);
    assert_int_equal(ntok, 5 + (94 - 26) + 36);
    trn_vocab_free(tok, ntok);
    /* special tokens in the text are cut out, not spelled; controls dropped
     * without splitting; over-long words skipped; UTF-8 kept whole */
    char longw[160];
    memset(longw, 'q', 150);
    longw[150] = '\0';
    const char *t[] = {"[CLS] ab\x01" "ab [SEP]", "ab\x7f" "ab", longw, "\xc3\xa9t\xc3\xa9 \xc3\xa9t\xc3\xa9"};
    trn_vocab_opts o = {1, 1, 0};
    assert_int_equal(trn_vocab_build(t, 4, 100, &o, &tok, &ntok), ENC_OK);
    int has_abab = 0, has_ete = 0;
    for (size_t i = 5; i < ntok; i++) {
        assert_null(strchr(tok[i], '['));
        assert_null(strchr(tok[i], 'q'));
        assert_null(strchr(tok[i], '\x01'));
        has_abab |= strcmp(tok[i], "abab") == 0;
        has_ete |= strcmp(tok[i], "\xc3\xa9t\xc3\xa9") == 0;
    }
    assert_true(has_abab);
    assert_true(has_ete);
    trn_vocab_free(tok, ntok);
    /* vocab.txt refuses line breaks */
    const char *nl[] = {"[PAD]", "a\nb"};
    char err[256];
    char *dir = tu_mkdtemp();
    char *path = tu_path(dir, "vocab.txt");
    assert_int_equal(trn_vocab_write(path, nl, 2, err, sizeof err), ENC_INVAL);
    char *nodir = tu_path(dir, "no/such/vocab.txt");
    assert_int_equal(trn_vocab_write(nodir, nl, 1, err, sizeof err), ENC_IO);
    free(nodir);
    free(path);
    tu_rmtree(dir);
    free(dir);
    trn_vocab_free(NULL, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clip_fixtures),  cmocka_unit_test(test_soft_targets),
        cmocka_unit_test(test_clip_finite_diff), cmocka_unit_test(test_clip_edges),
        cmocka_unit_test(test_consistency),    cmocka_unit_test(test_adamw_fixture),
        cmocka_unit_test(test_schedule),       cmocka_unit_test(test_clip_grad_norm),
        cmocka_unit_test(test_decay_mask),     cmocka_unit_test(test_checkpoint),
        cmocka_unit_test(test_eval_known),     cmocka_unit_test(test_eval_self),
        cmocka_unit_test(test_eval_random),    cmocka_unit_test(test_eval_chance),
        cmocka_unit_test(test_eval_precision_at), cmocka_unit_test(test_eval_auc),
        cmocka_unit_test(test_eval_ceiling), cmocka_unit_test(test_side_loss),
        cmocka_unit_test(test_vocab_merges),   cmocka_unit_test(test_vocab_corpus),
        cmocka_unit_test(test_vocab_edges),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
