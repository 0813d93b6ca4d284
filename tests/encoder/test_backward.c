/* test_backward.c - every backward twin of the CPU backend (be->train) against
 * central finite differences.
 *
 * Method: each op's forward is written again here in double precision, and
 * a scalar loss  L = sum(out * R)  (R random, fixed) is differentiated by
 * central differences of that double forward, (L(x + h) - L(x - h)) / 2h,
 * h = 1e-5 on inputs of order 1 (truncation ~h^2, rounding ~1e-16 / h: the
 * finite difference is good to ~1e-9 relative).  The analytic gradient is
 * the float kernel's, fed with the float inputs and dout = R, so what is
 * compared is the float backward against the exact derivative; the double
 * forwards are the definitions test_backend.c checks the float forwards
 * against.  The measure is normwise relative:
 *     err = max_i |analytic_i - fd_i| / max_i |fd_i|
 * and each check prints it.  Tolerances (float32 kernels, float inputs):
 *     matmul, patch_embed, tokens, embedding, cls_pool   1e-5
 *     layernorm, softmax, attention, l2norm               1e-5
 *     gelu                                                1e-5 (erf and exp
 *                                      are our approximations, ~6e-7 abs)
 * Accumulating outputs start from random values (subtracted afterwards);
 * written outputs start as NaN, so an element left unwritten shows.
 * Larger shapes (several attention row blocks, threads) are sampled: a
 * subset of input elements gets a finite difference.  The thread splits are
 * checked by running each op with 1, 2 and 3 threads.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "encoder/backend.h"
#include "testutil.h"

#define H_FD 1e-5

/* ---- helpers ---------------------------------------------------------------- */

typedef struct fx {
    enc_backend *be;
    tu_rng r;
    int nt;
} fx;

static int setup(void **state)
{
    int nt = *state != NULL ? *(const int *)*state : 2;
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->be = enc_backend_cpu_new(nt);
    assert_non_null(f->be);
    f->nt = nt;
    tu_rng_seed(&f->r, 777 + (uint64_t)nt);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    enc_backend_free(f->be);
    free(f);
    return 0;
}

/* Backend memory: n uniform floats in [-a, a). */
static float *rnd(fx *f, size_t n, double a)
{
    float *p = f->be->iface.alloc(f->be, (n ? n : 1) * sizeof(float));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(a * (2.0 * tu_rng_uniform(&f->r) - 1.0));
    return p;
}

static float *nans(fx *f, size_t n)
{
    float *p = f->be->iface.alloc(f->be, (n ? n : 1) * sizeof(float));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = NAN;
    return p;
}

static float *dup(fx *f, const float *x, size_t n)
{
    float *p = f->be->iface.alloc(f->be, (n ? n : 1) * sizeof(float));
    assert_non_null(p);
    memcpy(p, x, n * sizeof(float));
    return p;
}

static double *todouble(const float *x, size_t n)
{
    double *d = malloc((n ? n : 1) * sizeof(double));
    assert_non_null(d);
    for (size_t i = 0; i < n; i++)
        d[i] = x[i];
    return d;
}

static void bfree(fx *f, void *p)
{
    f->be->iface.free(f->be, p);
}

/* A double forward: the loss at the current values of the context's
 * double inputs. */
typedef double (*loss_fn)(void *ctx);

/* Central differences of loss with respect to x[idx[i]] (every element
 * when idx is NULL), into fd [n or nidx]. */
static void fd_grad(loss_fn loss, void *ctx, double *x, size_t n, const size_t *idx,
                    size_t nidx, double h, double *fd)
{
    size_t cnt = idx ? nidx : n;
    for (size_t i = 0; i < cnt; i++) {
        size_t k = idx ? idx[i] : i;
        double keep = x[k];
        x[k] = keep + h;
        double lp = loss(ctx);
        x[k] = keep - h;
        double lm = loss(ctx);
        x[k] = keep;
        fd[i] = (lp - lm) / (2 * h);
    }
}

/* Worst errors seen per op, printed at the end of each test. */
static double worst[16];
enum { W_MATMUL, W_LN, W_GELU, W_SOFTMAX, W_ATT, W_PATCH, W_TOK, W_EMB, W_POOL, W_L2, W_CLSATT,
       W_CONV };
static const char *const wnames[] = {"matmul", "layernorm", "gelu", "softmax", "attention",
                                     "patch_embed", "vit_tokens", "embedding", "cls_pool",
                                     "l2norm", "cls_attention", "conv"};

/* Compares the analytic gradient (got - base, base may be NULL) at the
 * sampled positions with fd: normwise relative error <= tol. */
static double check_grad(const char *what, int op, const float *got, const float *base,
                         const double *fd, size_t n, const size_t *idx, size_t nidx, double tol)
{
    size_t cnt = idx ? nidx : n;
    double emax = 0, gmax = 0;
    size_t at = 0;
    for (size_t i = 0; i < cnt; i++) {
        size_t k = idx ? idx[i] : i;
        double a = (double)got[k] - (base ? (double)base[k] : 0.0);
        double e = fabs(a - fd[i]);
        if (!(e <= emax)) /* NaN wins */
            emax = e, at = k;
        gmax = fmax(gmax, fabs(fd[i]));
    }
    double rel = emax / (gmax > 0 ? gmax : 1.0);
    if (!(rel <= tol)) {
        print_error("%s: relative error %.3g > %.3g (at %zu, |fd| max %.3g)\n", what, rel, tol,
                    at, gmax);
        fail();
    }
    if (!(rel <= worst[op]))
        worst[op] = rel;
    return rel;
}

/* nidx distinct-enough random positions in [0, n) (all when n <= nidx). */
static size_t *sample(fx *f, size_t n, size_t *nidx)
{
    size_t cnt = n < *nidx ? n : *nidx;
    size_t *idx = malloc((cnt ? cnt : 1) * sizeof *idx);
    assert_non_null(idx);
    for (size_t i = 0; i < cnt; i++)
        idx[i] = cnt == n ? i : (size_t)tu_rng_below(&f->r, n);
    *nidx = cnt;
    return idx;
}

static void report(int op)
{
    printf("  %-12s max relative error %.2e (all runs so far)\n", wnames[op], worst[op]);
}

/* ---- matmul ----------------------------------------------------------------- */

typedef struct mm_ctx {
    double *in, *w, *b, *R;
    int rows, nin, nout, ldr;
} mm_ctx;

static double mm_loss(void *c)
{
    mm_ctx *x = c;
    double L = 0;
    for (int r = 0; r < x->rows; r++)
        for (int j = 0; j < x->nout; j++) {
            double s = x->b ? x->b[j] : 0;
            for (int k = 0; k < x->nin; k++)
                s += x->in[(size_t)r * x->nin + k] * x->w[(size_t)j * x->nin + k];
            L += s * x->R[(size_t)r * x->ldr + j];
        }
    return L;
}

static void check_matmul(fx *f, int rows, int nin, int nout, int bias, int lddo, size_t ns)
{
    enc_backend *be = f->be;
    int ld = lddo ? lddo : nout;
    float *in = rnd(f, (size_t)rows * nin, 1), *w = rnd(f, (size_t)nout * nin, 1);
    float *b = bias ? rnd(f, (size_t)nout, 1) : NULL;
    float *dout = rnd(f, (size_t)rows * ld, 1);
    float *din = rnd(f, (size_t)rows * nin, 1), *dw = rnd(f, (size_t)nout * nin, 1);
    float *db = rnd(f, (size_t)nout, 1);
    float *din0 = dup(f, din, (size_t)rows * nin), *dw0 = dup(f, dw, (size_t)nout * nin);
    float *db0 = dup(f, db, (size_t)nout);
    be->train.matmul_backward(be, din, dw, bias ? db : NULL, dout, lddo, in, w, rows, nin, nout);
    mm_ctx c = {todouble(in, (size_t)rows * nin), todouble(w, (size_t)nout * nin),
                bias ? todouble(b, (size_t)nout) : NULL, todouble(dout, (size_t)rows * ld),
                rows, nin, nout, ld};
    size_t n1 = (size_t)rows * nin, n2 = (size_t)nout * nin, s1 = ns, s2 = ns;
    size_t *i1 = sample(f, n1, &s1), *i2 = sample(f, n2, &s2);
    double *fd = malloc((n1 + n2 + nout) * sizeof(double));
    fd_grad(mm_loss, &c, c.in, n1, i1, s1, H_FD, fd);
    check_grad("matmul din", W_MATMUL, din, din0, fd, n1, i1, s1, 1e-5);
    fd_grad(mm_loss, &c, c.w, n2, i2, s2, H_FD, fd);
    check_grad("matmul dw", W_MATMUL, dw, dw0, fd, n2, i2, s2, 1e-5);
    if (bias) {
        fd_grad(mm_loss, &c, c.b, nout, NULL, 0, H_FD, fd);
        check_grad("matmul dbias", W_MATMUL, db, db0, fd, nout, NULL, 0, 1e-5);
    } else {
        assert_memory_equal(db, db0, nout * sizeof(float));
    }
    /* NULL gradients are skipped: din alone equals the din above */
    float *din2 = dup(f, din0, n1);
    be->train.matmul_backward(be, din2, NULL, NULL, dout, lddo, in, w, rows, nin, nout);
    for (size_t i = 0; i < n1; i++)
        assert_true(fabsf(din2[i] - din[i]) <= 1e-5f * (1 + fabsf(din[i])));
    free(fd), free(i1), free(i2), free(c.in), free(c.w), free(c.b), free(c.R);
    bfree(f, in), bfree(f, w), bfree(f, b), bfree(f, dout), bfree(f, din), bfree(f, dw);
    bfree(f, db), bfree(f, din0), bfree(f, dw0), bfree(f, db0), bfree(f, din2);
}

static void test_matmul_backward(void **state)
{
    fx *f = *state;
    check_matmul(f, 1, 1, 1, 1, 0, 1000);
    check_matmul(f, 7, 13, 5, 1, 0, 1000);
    check_matmul(f, 7, 13, 5, 0, 0, 1000);
    check_matmul(f, 5, 6, 4, 1, 12, 1000);  /* a q/k/v column block of a fused [rows, 3D] */
    check_matmul(f, 33, 17, 65, 1, 0, 300); /* more outputs than inputs */
    check_matmul(f, 130, 40, 60, 1, 0, 50); /* big enough for the team: sampled */
    check_matmul(f, 3, 100, 300, 1, 0, 50); /* few rows: din split by columns */
    report(W_MATMUL);
}

/* ---- layernorm ---------------------------------------------------------------- */

typedef struct ln_ctx {
    double *in, *w, *b, *R;
    int rows, dim;
    double eps;
} ln_ctx;

static double ln_loss(void *c)
{
    ln_ctx *x = c;
    double L = 0;
    for (int r = 0; r < x->rows; r++) {
        const double *v = x->in + (size_t)r * x->dim;
        double mean = 0, var = 0;
        for (int j = 0; j < x->dim; j++)
            mean += v[j];
        mean /= x->dim;
        for (int j = 0; j < x->dim; j++)
            var += (v[j] - mean) * (v[j] - mean);
        var /= x->dim;
        for (int j = 0; j < x->dim; j++)
            L += ((v[j] - mean) / sqrt(var + x->eps) * x->w[j] + x->b[j]) *
                 x->R[(size_t)r * x->dim + j];
    }
    return L;
}

static void check_layernorm(fx *f, int rows, int dim, float eps, double offset)
{
    enc_backend *be = f->be;
    size_t n = (size_t)rows * dim;
    float *in = rnd(f, n, 1), *w = rnd(f, (size_t)dim, 1), *b = rnd(f, (size_t)dim, 1);
    for (size_t i = 0; i < n; i++) /* rows with a large mean against their spread */
        in[i] += (float)(offset * (double)(i / (size_t)dim % 3));
    float *dout = rnd(f, n, 1), *din = rnd(f, n, 1), *dw = rnd(f, (size_t)dim, 1);
    float *db = rnd(f, (size_t)dim, 1);
    float *din0 = dup(f, din, n), *dw0 = dup(f, dw, (size_t)dim), *db0 = dup(f, db, (size_t)dim);
    float *scr = rnd(f, be->train.layernorm_backward_scratch(be, rows, dim), 1);
    be->train.layernorm_backward(be, din, dw, db, dout, in, w, rows, dim, eps, scr);
    ln_ctx c = {todouble(in, n), todouble(w, (size_t)dim), todouble(b, (size_t)dim),
                todouble(dout, n), rows, dim, eps};
    size_t s1 = 400, *i1 = sample(f, n, &s1);
    double *fd = malloc((n + 2 * dim) * sizeof(double));
    fd_grad(ln_loss, &c, c.in, n, i1, s1, H_FD, fd);
    check_grad("layernorm din", W_LN, din, din0, fd, n, i1, s1, 1e-5);
    fd_grad(ln_loss, &c, c.w, (size_t)dim, NULL, 0, H_FD, fd);
    check_grad("layernorm dw", W_LN, dw, dw0, fd, (size_t)dim, NULL, 0, 1e-5);
    fd_grad(ln_loss, &c, c.b, (size_t)dim, NULL, 0, H_FD, fd);
    check_grad("layernorm db", W_LN, db, db0, fd, (size_t)dim, NULL, 0, 1e-5);
    free(fd), free(i1), free(c.in), free(c.w), free(c.b), free(c.R);
    bfree(f, in), bfree(f, w), bfree(f, b), bfree(f, dout), bfree(f, din), bfree(f, dw);
    bfree(f, db), bfree(f, din0), bfree(f, dw0), bfree(f, db0), bfree(f, scr);
}

static void test_layernorm_backward(void **state)
{
    fx *f = *state;
    check_layernorm(f, 1, 1, 1e-5f, 0);  /* dim 1: the output is b, din 0 */
    check_layernorm(f, 5, 7, 1e-5f, 0);
    check_layernorm(f, 9, 64, 1e-12f, 100); /* mean 100 and 200 rows */
    check_layernorm(f, 3, 130, 1e-6f, 0);   /* more than one column block */
    check_layernorm(f, 300, 200, 1e-6f, 10); /* the team: sampled */
    report(W_LN);
}

/* ---- gelu, softmax ---------------------------------------------------------------- */

static double dgelu(double x)
{
    return 0.5 * x * (1 + erf(x / sqrt(2.0)));
}

static void test_gelu_backward(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    size_t n = 50001; /* odd, more than one chunk */
    float *x = rnd(f, n, 8), *dout = rnd(f, n, 1), *din = nans(f, n);
    for (size_t i = 0; i < 12001; i++) /* a grid over [-6, 6] */
        x[i] = -6.0f + (float)i * 0.001f;
    x[0] = 0.0f, x[1] = -0.0f, x[2] = 30.0f, x[3] = -30.0f, x[4] = 1e-20f;
    be->train.gelu_backward(be, din, x, dout, n);
    double *fd = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) /* elementwise: one difference per element */
        fd[i] = (dgelu((double)x[i] + H_FD) - dgelu((double)x[i] - H_FD)) / (2 * H_FD) * dout[i];
    check_grad("gelu", W_GELU, din, NULL, fd, n, NULL, 0, 1e-5);
    /* in place gives the same bits */
    float *d2 = dup(f, dout, n);
    be->train.gelu_backward(be, d2, x, d2, n);
    assert_memory_equal(d2, din, n * sizeof(float));
    free(fd);
    bfree(f, x), bfree(f, dout), bfree(f, din), bfree(f, d2);
    report(W_GELU);
}

typedef struct sm_ctx {
    double *in, *R;
    int rows, cols;
} sm_ctx;

static double sm_loss(void *c)
{
    sm_ctx *x = c;
    double L = 0;
    for (int r = 0; r < x->rows; r++) {
        const double *v = x->in + (size_t)r * x->cols;
        double m = -INFINITY, s = 0;
        for (int j = 0; j < x->cols; j++)
            m = fmax(m, v[j]);
        if (m == -INFINITY)
            continue; /* all -inf: all 0 */
        for (int j = 0; j < x->cols; j++)
            s += exp(v[j] - m);
        for (int j = 0; j < x->cols; j++)
            L += exp(v[j] - m) / s * x->R[(size_t)r * x->cols + j];
    }
    return L;
}

static void test_softmax_backward(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    static const int cols_list[] = {1, 6, 33};
    for (int ci = 0; ci < 3; ci++) {
        int rows = 7, cols = cols_list[ci];
        size_t n = (size_t)rows * cols;
        float *in = rnd(f, n, 4), *out = nans(f, n), *dout = rnd(f, n, 1), *din = nans(f, n);
        for (int j = 0; j < cols; j++) {
            in[1 * cols + j] = -INFINITY; /* row 1 all -inf */
            if (j % 3 == 1)
                in[2 * cols + j] = -INFINITY; /* row 2 partly */
        }
        be->iface.softmax(be, out, in, rows, cols);
        be->train.softmax_backward(be, din, out, dout, rows, cols);
        sm_ctx c = {todouble(in, n), todouble(dout, n), rows, cols};
        double *fd = malloc(n * sizeof(double));
        fd_grad(sm_loss, &c, c.in, n, NULL, 0, H_FD, fd);
        for (size_t i = 0; i < n; i++) /* -inf +- h is -inf: the difference is NaN there */
            if (isinf(in[i]))
                fd[i] = 0;
        check_grad("softmax", W_SOFTMAX, din, NULL, fd, n, NULL, 0, 1e-5);
        float *d2 = dup(f, dout, n);
        be->train.softmax_backward(be, d2, out, d2, rows, cols); /* in place */
        assert_memory_equal(d2, din, n * sizeof(float));
        free(fd), free(c.in), free(c.R);
        bfree(f, in), bfree(f, out), bfree(f, dout), bfree(f, din), bfree(f, d2);
    }
    report(W_SOFTMAX);
}

/* ---- attention ------------------------------------------------------------------- */

typedef struct at_ctx {
    double *qkv, *R;
    const float *mask;
    int B, T, D, H;
    double *s; /* [T] */
} at_ctx;

/* Hugging Face semantics in double: scores + (1 - mask) * -FLT_MAX (for a
 * row with every key masked the sum rounds to -FLT_MAX: uniform, and
 * independent of q and k, in double as in float). */
static double at_loss(void *c)
{
    at_ctx *x = c;
    const int T = x->T, D = x->D, H = x->H, hd = D / H;
    double L = 0, *s = x->s;
    for (int b = 0; b < x->B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const double *q = x->qkv + ((size_t)b * T + i) * 3 * D + h * hd;
                double m = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    const double *k = x->qkv + ((size_t)b * T + j) * 3 * D + D + h * hd;
                    double d = 0;
                    for (int e = 0; e < hd; e++)
                        d += q[e] * k[e];
                    d /= sqrt((double)hd);
                    if (x->mask)
                        d += (1.0 - x->mask[(size_t)b * T + j]) * -(double)FLT_MAX;
                    s[j] = d;
                    m = fmax(m, d);
                }
                for (int j = 0; j < T; j++)
                    sum += (s[j] = exp(s[j] - m));
                for (int e = 0; e < hd; e++) {
                    double o = 0;
                    for (int j = 0; j < T; j++)
                        o += s[j] / sum * x->qkv[((size_t)b * T + j) * 3 * D + 2 * D + h * hd + e];
                    L += o * x->R[((size_t)b * T + i) * D + h * hd + e];
                }
            }
    return L;
}

static void check_attention(fx *f, int B, int T, int D, int H, int masked, size_t nsample)
{
    enc_backend *be = f->be;
    size_t nq = (size_t)B * T * 3 * D, no = (size_t)B * T * D;
    float *qkv = rnd(f, nq, 1.5), *dout = rnd(f, no, 1), *dqkv = nans(f, nq);
    float *mask = NULL;
    if (masked) {
        mask = rnd(f, (size_t)B * T, 1);
        for (int b = 0; b < B; b++) /* b = 0: padding after 2/3; b = 1: every key masked */
            for (int t = 0; t < T; t++)
                mask[(size_t)b * T + t] = b == 1 ? 0.0f : t < (2 * T + 2) / 3 ? 1.0f : 0.0f;
    }
    float *scr = rnd(f, be->train.attention_backward_scratch(be, B, T, H), 1);
    be->train.attention_backward(be, dqkv, dout, qkv, mask, scr, B, T, D, H);
    at_ctx c = {todouble(qkv, nq), todouble(dout, no), mask, B, T, D, H, NULL};
    c.s = malloc((size_t)T * sizeof(double));
    size_t ns = nsample, *idx = sample(f, nq, &ns);
    double *fd = malloc(ns * sizeof(double));
    fd_grad(at_loss, &c, c.qkv, nq, idx, ns, H_FD, fd);
    char what[64];
    snprintf(what, sizeof what, "attention B%d T%d D%d H%d%s", B, T, D, H, masked ? " mask" : "");
    check_grad(what, W_ATT, dqkv, NULL, fd, nq, idx, ns, 1e-5);
    for (size_t i = 0; i < nq; i++)
        assert_false(isnan(dqkv[i])); /* every element written */
    if (masked && B > 1) /* the all-masked element: no gradient reaches q or k */
        for (int t = 0; t < T; t++)
            for (int d = 0; d < 2 * D; d++)
                assert_true(dqkv[((size_t)1 * T + t) * 3 * D + d] == 0.0f);
    free(fd), free(idx), free(c.qkv), free(c.R), free(c.s);
    bfree(f, qkv), bfree(f, dout), bfree(f, dqkv), bfree(f, mask), bfree(f, scr);
}

static void test_attention_backward(void **state)
{
    fx *f = *state;
    check_attention(f, 1, 1, 4, 2, 0, 1000);
    check_attention(f, 2, 5, 8, 2, 0, 1000);
    check_attention(f, 2, 5, 8, 2, 1, 1000);
    check_attention(f, 3, 7, 9, 3, 1, 1000); /* odd sizes, hd 3 */
    check_attention(f, 2, 13, 12, 1, 1, 1000);
    check_attention(f, 1, 131, 4, 2, 0, 150); /* two blocks of query rows: sampled */
    check_attention(f, 2, 150, 8, 2, 1, 100);
    report(W_ATT);
}

/* ---- patch embedding ------------------------------------------------------------------ */

typedef struct pe_ctx {
    double *in;
    double *w, *b, *R; /* R [B, N + 1, D], patches in rows 1..N */
    enc_patch_geom g;
    int B, D;
} pe_ctx;

/* The convolution (or MONAI's Rearrange + Linear) by definition. */
static double pe_loss(void *c)
{
    pe_ctx *x = c;
    const enc_patch_geom *g = &x->g;
    const int C = g->channels, Z = g->size[0], Y = g->size[1], X = g->size[2];
    const int pz = g->patch[0], py = g->patch[1], px = g->patch[2];
    const int gy = Y / py, gx = X / px;
    const size_t N = enc_patch_count(g), K = enc_patch_dim(g), img = (size_t)C * Z * Y * X;
    double L = 0;
    for (int b = 0; b < x->B; b++)
        for (size_t n = 0; n < N; n++) {
            int iz = (int)(n / (size_t)(gy * gx)), iy = (int)(n / gx % gy), ix = (int)(n % gx);
            for (int d = 0; d < x->D; d++) {
                double s = x->b[d];
                for (int ch = 0; ch < C; ch++)
                    for (int z = 0; z < pz; z++)
                        for (int y = 0; y < py; y++)
                            for (int xx = 0; xx < px; xx++) {
                                size_t k = g->order == ENC_PATCH_CONV
                                               ? (((size_t)ch * pz + z) * py + y) * px + xx
                                               : (((size_t)z * py + y) * px + xx) * C + ch;
                                s += x->in[(size_t)b * img +
                                           (((size_t)ch * Z + iz * pz + z) * Y + iy * py + y) *
                                               X +
                                           ix * px + xx] *
                                     x->w[(size_t)d * K + k];
                            }
                L += s * x->R[((size_t)b * (N + 1) + 1 + n) * x->D + d];
            }
        }
    return L;
}

static void check_patch(fx *f, int B, int C, int Z, int Y, int X, int pz, int py, int px, int D,
                        int order)
{
    enc_backend *be = f->be;
    enc_patch_geom g = {C, {Z, Y, X}, {pz, py, px}, order};
    size_t N = enc_patch_count(&g), K = enc_patch_dim(&g), img = (size_t)C * Z * Y * X;
    size_t bstride = (N + 1) * D;
    float *in = rnd(f, B * img, 1), *w = rnd(f, D * K, 1);
    float *dout = rnd(f, B * bstride, 1), *dw = rnd(f, D * K, 1), *db = rnd(f, (size_t)D, 1);
    float *dw0 = dup(f, dw, D * K), *db0 = dup(f, db, (size_t)D);
    float *scr = rnd(f, be->iface.patch_scratch(be, &g, B), 1);
    be->train.patch_embed_backward(be, NULL, dw, db, dout + D, bstride, in, NULL, &g, B, D, scr);
    float *b = rnd(f, (size_t)D, 1);
    pe_ctx c = {todouble(in, B * img), todouble(w, D * K), todouble(b, (size_t)D),
                todouble(dout, B * bstride), g, B, D};
    double *fd = malloc((D * K + D + B * img) * sizeof(double));
    fd_grad(pe_loss, &c, c.w, D * K, NULL, 0, H_FD, fd);
    check_grad("patch_embed dw", W_PATCH, dw, dw0, fd, D * K, NULL, 0, 1e-5);
    fd_grad(pe_loss, &c, c.b, (size_t)D, NULL, 0, H_FD, fd);
    check_grad("patch_embed db", W_PATCH, db, db0, fd, (size_t)D, NULL, 0, 1e-5);
    if (order == ENC_PATCH_CONV) {
        /* the input's gradient (a stem's output), accumulated onto din */
        float *din = rnd(f, B * img, 1), *din0 = dup(f, din, B * img);
        be->train.patch_embed_backward(be, din, NULL, NULL, dout + D, bstride, in, w, &g, B, D,
                                       scr);
        fd_grad(pe_loss, &c, c.in, B * img, NULL, 0, H_FD, fd);
        check_grad("patch_embed din", W_PATCH, din, din0, fd, B * img, NULL, 0, 1e-5);
        bfree(f, din), bfree(f, din0);
    }
    free(fd), free(c.in), free(c.w), free(c.b), free(c.R);
    bfree(f, in), bfree(f, w), bfree(f, b), bfree(f, dout), bfree(f, dw), bfree(f, db);
    bfree(f, dw0), bfree(f, db0), bfree(f, scr);
}

static void test_patch_embed_backward(void **state)
{
    fx *f = *state;
    for (int order = 0; order < 2; order++) {
        check_patch(f, 2, 1, 1, 8, 8, 1, 4, 4, 5, order);   /* 2D */
        check_patch(f, 2, 3, 1, 6, 8, 1, 3, 4, 4, order);   /* 2D, 3 channels, not square */
        check_patch(f, 2, 2, 4, 6, 8, 2, 3, 4, 3, order);   /* 3D, uneven patch, 2 channels */
    }
    report(W_PATCH);
}

/* ---- convolution ------------------------------------------------------------------------ */

typedef struct cv_ctx {
    double *in, *w, *b, *R; /* R [B, cout, N'] */
    enc_conv_geom g;
    int B;
} cv_ctx;

/* sum of R * conv(in), the convolution by definition (zero padding). */
static double cv_loss(void *c)
{
    cv_ctx *x = c;
    const enc_conv_geom *g = &x->g;
    int o[3];
    enc_conv_out(g, o);
    const size_t N = enc_conv_count(g), K = enc_conv_dim(g);
    const size_t img = (size_t)g->cin * g->size[0] * g->size[1] * g->size[2];
    double L = 0;
    for (int b = 0; b < x->B; b++)
        for (int co = 0; co < g->cout; co++)
            for (size_t n = 0; n < N; n++) {
                int oz = (int)(n / ((size_t)o[1] * o[2])), oy = (int)(n / o[2] % o[1]);
                int ox = (int)(n % o[2]);
                double s = x->b[co];
                for (int ci = 0; ci < g->cin; ci++)
                    for (int a = 0; a < g->kernel[0]; a++)
                        for (int y = 0; y < g->kernel[1]; y++)
                            for (int e = 0; e < g->kernel[2]; e++) {
                                int iz = oz * g->stride[0] - g->pad[0] + a;
                                int iy = oy * g->stride[1] - g->pad[1] + y;
                                int ix = ox * g->stride[2] - g->pad[2] + e;
                                if (iz < 0 || iz >= g->size[0] || iy < 0 || iy >= g->size[1] ||
                                    ix < 0 || ix >= g->size[2])
                                    continue;
                                s += x->in[(size_t)b * img +
                                           (((size_t)ci * g->size[0] + iz) * g->size[1] + iy) *
                                               g->size[2] +
                                           ix] *
                                     x->w[(size_t)co * K +
                                          (((size_t)ci * g->kernel[0] + a) * g->kernel[1] + y) *
                                              g->kernel[2] +
                                          e];
                            }
                L += s * x->R[((size_t)b * g->cout + co) * N + n];
            }
    return L;
}

/* sample > 0: finite differences for that many entries of dw and din only
 * (large shapes, where the team splits the work). */
static void check_conv(fx *f, int B, enc_conv_geom g, size_t sample)
{
    enc_backend *be = f->be;
    const size_t N = enc_conv_count(&g), K = enc_conv_dim(&g), Co = (size_t)g.cout;
    const size_t img = (size_t)g.cin * g.size[0] * g.size[1] * g.size[2];
    float *in = rnd(f, B * img, 1), *w = rnd(f, Co * K, 1), *b = rnd(f, Co, 1);
    float *dout = rnd(f, B * Co * N, 1);
    float *din = rnd(f, B * img, 1), *dw = rnd(f, Co * K, 1), *db = rnd(f, Co, 1);
    float *din0 = dup(f, din, B * img), *dw0 = dup(f, dw, Co * K), *db0 = dup(f, db, Co);
    float *scr = nans(f, be->iface.conv_scratch(be, &g));
    be->train.conv_backward(be, din, dw, db, dout, in, w, &g, B, scr);
    cv_ctx c = {todouble(in, B * img), todouble(w, Co * K), todouble(b, Co),
                todouble(dout, B * Co * N), g, B};
    double *fd = malloc((Co * K + Co + B * img) * sizeof(double));
    size_t iw[64], ii[64];
    assert_true(sample <= 64);
    for (size_t i = 0; i < sample; i++) {
        iw[i] = (size_t)tu_rng_below(&f->r, Co * K);
        ii[i] = (size_t)tu_rng_below(&f->r, B * img);
    }
    fd_grad(cv_loss, &c, c.w, Co * K, sample ? iw : NULL, sample, H_FD, fd);
    check_grad("conv dw", W_CONV, dw, dw0, fd, Co * K, sample ? iw : NULL, sample, 1e-5);
    fd_grad(cv_loss, &c, c.b, Co, NULL, 0, H_FD, fd);
    check_grad("conv db", W_CONV, db, db0, fd, Co, NULL, 0, 1e-5);
    fd_grad(cv_loss, &c, c.in, B * img, sample ? ii : NULL, sample, H_FD, fd);
    check_grad("conv din", W_CONV, din, din0, fd, B * img, sample ? ii : NULL, sample, 1e-5);
    /* NULL gradients are skipped; the rest unchanged */
    float *dw1 = dup(f, dw, Co * K);
    be->train.conv_backward(be, NULL, dw, NULL, dout, in, w, &g, B, scr);
    for (size_t i = 0; i < Co * K; i++)
        assert_true(fabsf(dw[i] - 2 * dw1[i] + dw0[i]) <= 1e-4f * (1 + fabsf(dw[i])));
    free(fd), free(c.in), free(c.w), free(c.b), free(c.R);
    bfree(f, in), bfree(f, w), bfree(f, b), bfree(f, dout), bfree(f, din), bfree(f, dw);
    bfree(f, db), bfree(f, din0), bfree(f, dw0), bfree(f, db0), bfree(f, dw1), bfree(f, scr);
}

static void test_conv_backward(void **state)
{
    fx *f = *state;
    check_conv(f, 2, (enc_conv_geom){1, 3, {1, 8, 8}, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}}, 0);
    check_conv(f, 2, (enc_conv_geom){2, 3, {1, 7, 6}, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}}, 0);
    check_conv(f, 2, (enc_conv_geom){2, 2, {4, 6, 6}, {3, 3, 3}, {2, 2, 2}, {1, 1, 1}}, 0);
    check_conv(f, 1, (enc_conv_geom){3, 2, {3, 4, 5}, {1, 3, 1}, {1, 1, 2}, {0, 1, 0}}, 0);
    /* split over the team (N K cout > 2^18), sampled */
    check_conv(f, 1, (enc_conv_geom){4, 16, {2, 12, 12}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}}, 40);
    report(W_CONV);
}

/* ---- tokens, embedding, pooling, l2norm -------------------------------------------------- */

typedef struct tk_ctx {
    double *cls, *pos, *R;
    int has_cls, B, N, D;
} tk_ctx;

/* The loss of vit_tokens' output over cls and pos (the patch rows' own
 * values add a constant). */
static double tk_loss(void *c)
{
    tk_ctx *x = c;
    const int T = x->N + 1;
    double L = 0;
    for (int b = 0; b < x->B; b++)
        for (int t = 0; t < T; t++)
            for (int d = 0; d < x->D; d++) {
                double v = t == 0 ? x->cls[d] : 0;
                if (x->has_cls)
                    v += x->pos[(size_t)t * x->D + d];
                else if (t > 0)
                    v += x->pos[(size_t)(t - 1) * x->D + d];
                L += v * x->R[((size_t)b * T + t) * x->D + d];
            }
    return L;
}

static void test_vit_tokens_backward(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    int B = 3, N = 5, D = 7, T = N + 1;
    for (int has_cls = 0; has_cls < 2; has_cls++) {
        size_t np = (size_t)(N + has_cls) * D;
        float *dx = rnd(f, (size_t)B * T * D, 1), *dcls = rnd(f, (size_t)D, 1);
        float *dpos = rnd(f, np, 1), *dcls0 = dup(f, dcls, (size_t)D), *dpos0 = dup(f, dpos, np);
        be->train.vit_tokens_backward(be, dcls, dpos, dx, has_cls, B, N, D);
        float *cls = rnd(f, (size_t)D, 1), *pos = rnd(f, np, 1);
        tk_ctx c = {todouble(cls, (size_t)D), todouble(pos, np), todouble(dx, (size_t)B * T * D),
                    has_cls, B, N, D};
        double *fd = malloc(np * sizeof(double));
        fd_grad(tk_loss, &c, c.cls, (size_t)D, NULL, 0, H_FD, fd);
        check_grad("vit_tokens dcls", W_TOK, dcls, dcls0, fd, (size_t)D, NULL, 0, 1e-5);
        fd_grad(tk_loss, &c, c.pos, np, NULL, 0, H_FD, fd);
        check_grad("vit_tokens dpos", W_TOK, dpos, dpos0, fd, np, NULL, 0, 1e-5);
        /* NULL dcls: dpos alone, the same */
        float *dpos2 = dup(f, dpos0, np);
        be->train.vit_tokens_backward(be, NULL, dpos2, dx, has_cls, B, N, D);
        assert_memory_equal(dpos2, dpos, np * sizeof(float));
        free(fd), free(c.cls), free(c.pos), free(c.R);
        bfree(f, dx), bfree(f, dcls), bfree(f, dpos), bfree(f, dcls0), bfree(f, dpos0);
        bfree(f, cls), bfree(f, pos), bfree(f, dpos2);
    }
    report(W_TOK);
}

typedef struct em_ctx {
    double *table, *pos, *type, *R;
    const int32_t *ids;
    int B, L, D;
} em_ctx;

static double em_loss(void *c)
{
    em_ctx *x = c;
    double L = 0;
    for (int r = 0; r < x->B * x->L; r++)
        for (int d = 0; d < x->D; d++)
            L += (x->table[(size_t)x->ids[r] * x->D + d] + x->pos[(size_t)(r % x->L) * x->D + d] +
                  x->type[d]) *
                 x->R[(size_t)r * x->D + d];
    return L;
}

static void test_embedding_backward(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    int B = 2, L = 6, D = 37, V = 11, P = L + 3;
    int32_t ids[12] = {0, 10, 3, 3, 7, 1, 10, 0, 0, 5, 3, 9}; /* repeats within and across */
    size_t nt = (size_t)V * D, np = (size_t)P * D;
    float *dout = rnd(f, (size_t)B * L * D, 1), *dt = rnd(f, nt, 1), *dp = rnd(f, np, 1);
    float *dty = rnd(f, (size_t)D, 1);
    float *dt0 = dup(f, dt, nt), *dp0 = dup(f, dp, np), *dty0 = dup(f, dty, (size_t)D);
    be->train.embedding_backward(be, dt, dp, dty, dout, ids, B, L, D);
    float *t = rnd(f, nt, 1), *p = rnd(f, np, 1), *ty = rnd(f, (size_t)D, 1);
    em_ctx c = {todouble(t, nt), todouble(p, np), todouble(ty, (size_t)D),
                todouble(dout, (size_t)B * L * D), ids, B, L, D};
    double *fd = malloc(nt * sizeof(double));
    fd_grad(em_loss, &c, c.table, nt, NULL, 0, H_FD, fd);
    check_grad("embedding dtable", W_EMB, dt, dt0, fd, nt, NULL, 0, 1e-5);
    fd_grad(em_loss, &c, c.pos, np, NULL, 0, H_FD, fd);
    check_grad("embedding dpos", W_EMB, dp, dp0, fd, np, NULL, 0, 1e-5);
    fd_grad(em_loss, &c, c.type, (size_t)D, NULL, 0, H_FD, fd);
    check_grad("embedding dtype", W_EMB, dty, dty0, fd, (size_t)D, NULL, 0, 1e-5);
    /* NULL pos and type: the table's gradient alone, the same bits */
    float *dt2 = dup(f, dt0, nt);
    be->train.embedding_backward(be, dt2, NULL, NULL, dout, ids, B, L, D);
    assert_memory_equal(dt2, dt, nt * sizeof(float));
    free(fd), free(c.table), free(c.pos), free(c.type), free(c.R);
    bfree(f, dout), bfree(f, dt), bfree(f, dp), bfree(f, dty), bfree(f, dt0), bfree(f, dp0);
    bfree(f, dty0), bfree(f, t), bfree(f, p), bfree(f, ty), bfree(f, dt2);
    report(W_EMB);
}

typedef struct cp_ctx {
    double *x, *R;
    int B, T, D;
} cp_ctx;

static double cp_loss(void *c)
{
    cp_ctx *x = c;
    double L = 0;
    for (int b = 0; b < x->B; b++)
        for (int d = 0; d < x->D; d++)
            L += x->x[(size_t)b * x->T * x->D + d] * x->R[(size_t)b * x->D + d];
    return L;
}

typedef struct l2_ctx {
    double *x, *R;
    int rows, dim;
} l2_ctx;

static double l2_loss(void *c)
{
    l2_ctx *x = c;
    double L = 0;
    for (int r = 0; r < x->rows; r++) {
        const double *v = x->x + (size_t)r * x->dim;
        double s = 0;
        for (int j = 0; j < x->dim; j++)
            s += v[j] * v[j];
        double n = fmax(sqrt(s), 1e-12);
        for (int j = 0; j < x->dim; j++)
            L += v[j] / n * x->R[(size_t)r * x->dim + j];
    }
    return L;
}

static void test_cls_pool_l2norm_backward(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    /* cls_pool */
    int B = 3, T = 4, D = 5;
    size_t nx = (size_t)B * T * D;
    float *dout = rnd(f, (size_t)B * D, 1), *dx = rnd(f, nx, 1), *dx0 = dup(f, dx, nx);
    be->train.cls_pool_backward(be, dx, dout, B, T, D);
    float *x = rnd(f, nx, 1);
    cp_ctx c = {todouble(x, nx), todouble(dout, (size_t)B * D), B, T, D};
    double *fd = malloc(nx * sizeof(double));
    fd_grad(cp_loss, &c, c.x, nx, NULL, 0, H_FD, fd);
    check_grad("cls_pool", W_POOL, dx, dx0, fd, nx, NULL, 0, 1e-5);
    free(fd), free(c.x), free(c.R);
    bfree(f, dout), bfree(f, dx), bfree(f, dx0), bfree(f, x);

    /* l2norm: norms from 1e-3 to 1e3, and one row inside the clamp */
    int rows = 6, dim = 9;
    size_t n = (size_t)rows * dim;
    float *in = rnd(f, n, 1), *g = rnd(f, n, 1), *din = nans(f, n);
    for (int j = 0; j < dim; j++) {
        in[0 * dim + j] *= 1e-3f;
        in[1 * dim + j] *= 1e3f;
        in[5 * dim + j] *= 1e-14f; /* ||in|| < 1e-12: out = in * 1e12 */
    }
    be->train.l2norm_backward(be, din, in, g, rows, dim);
    l2_ctx lc = {todouble(in, n), todouble(g, n), rows, dim};
    fd = malloc(n * sizeof(double));
    for (int r = 0; r < rows; r++) { /* h scaled to the row: 1e-5 of its norm */
        double s = 0;
        for (int j = 0; j < dim; j++)
            s += (double)in[r * dim + j] * in[r * dim + j];
        size_t idx[9];
        for (int j = 0; j < dim; j++)
            idx[j] = (size_t)r * dim + j;
        fd_grad(l2_loss, &lc, lc.x, n, idx, (size_t)dim, H_FD * sqrt(s), fd + (size_t)r * dim);
    }
    check_grad("l2norm rows", W_L2, din, NULL, fd, n - dim, NULL, 0, 1e-5);
    double *fdl = fd + 5 * dim;
    for (int j = 0; j < dim; j++) /* relative to the clamped row's own scale (1e12) */
        assert_true(fabs(din[5 * dim + j] - fdl[j]) <= 1e-5 * 1e12);
    free(fd), free(lc.x), free(lc.R);
    bfree(f, in), bfree(f, g), bfree(f, din);
    report(W_POOL);
    report(W_L2);
}

/* ---- cls_attention (a forward op) --------------------------------------------------------- */

static void test_cls_attention(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    static const int shapes[][4] = {{2, 5, 8, 2}, {3, 9, 12, 3}, {1, 200, 16, 4}};
    for (int si = 0; si < 3; si++) {
        int B = shapes[si][0], T = shapes[si][1], D = shapes[si][2], H = shapes[si][3];
        for (int masked = 0; masked < 2; masked++) {
            size_t nq = (size_t)B * T * 3 * D;
            float *qkv = rnd(f, nq, 1.5), *mask = NULL;
            if (masked) {
                mask = rnd(f, (size_t)B * T, 1);
                for (int b = 0; b < B; b++)
                    for (int t = 0; t < T; t++)
                        mask[(size_t)b * T + t] = b == 1 ? 0.0f : t < (2 * T + 2) / 3;
            }
            float *probs = rnd(f, (size_t)B * H * T * T, 1), *att = rnd(f, (size_t)B * T * D, 1);
            float *acc = rnd(f, (size_t)B * (T - 1), 1), *acc0 = dup(f, acc, (size_t)B * (T - 1));
            float *scr = rnd(f, (size_t)T, 1);
            be->iface.attention(be, att, probs, qkv, mask, NULL, B, T, D, H);
            be->train.cls_attention(be, acc, qkv, mask, scr, B, T, D, H, 1, 0.25f);
            double e = 0;
            for (int b = 0; b < B; b++)
                for (int j = 1; j < T; j++) {
                    double want = acc0[(size_t)b * (T - 1) + j - 1];
                    for (int h = 0; h < H; h++)
                        want += 0.25 * probs[(((size_t)b * H + h) * T + 0) * T + j];
                    e = fmax(e, fabs(acc[(size_t)b * (T - 1) + j - 1] - want));
                }
            if (!(e <= 1e-6)) {
                print_error("cls_attention B%d T%d: max diff %.3g\n", B, T, e);
                fail();
            }
            worst[W_CLSATT] = fmax(worst[W_CLSATT], e);
            bfree(f, qkv), bfree(f, mask), bfree(f, probs), bfree(f, att), bfree(f, acc);
            bfree(f, acc0), bfree(f, scr);
        }
    }
    printf("  cls_attention  max abs diff from the full probabilities %.2e\n", worst[W_CLSATT]);
}

/* ---- the table and the thread splits ----------------------------------------------------- */

static void test_train_table_complete(void **state)
{
    fx *f = *state;
    const enc_backend_train_i *t = &f->be->train;
    void (*const fns[])(void) = {
        (void (*)(void))t->layernorm_backward_scratch,
        (void (*)(void))t->attention_backward_scratch,
        (void (*)(void))t->zero,
        (void (*)(void))t->matmul_backward,
        (void (*)(void))t->layernorm_backward,
        (void (*)(void))t->gelu_backward,
        (void (*)(void))t->softmax_backward,
        (void (*)(void))t->attention_backward,
        (void (*)(void))t->patch_embed_backward,
        (void (*)(void))t->vit_tokens_backward,
        (void (*)(void))t->embedding_backward,
        (void (*)(void))t->cls_pool_backward,
        (void (*)(void))t->l2norm_backward,
        (void (*)(void))t->cls_attention,
        (void (*)(void))t->conv_backward,
    };
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
        assert_non_null(fns[i]);
    /* an op added to the table must be added here (and to every backend) */
    assert_int_equal(sizeof fns / sizeof fns[0] * sizeof(void *), sizeof *t);
    float z[5] = {1, 2, 3, 4, 5};
    t->zero(f->be, z, 5);
    for (int i = 0; i < 5; i++)
        assert_true(z[i] == 0.0f);
}

/* The column-split reductions (layernorm's dw and db, dbias, the
 * embedding table) give the same bits for 1, 2 and 3 threads; the
 * sgemm-based gradients agree to rounding. */
static void test_thread_counts(void **state)
{
    (void)state;
    enc_backend *be[3];
    for (int i = 0; i < 3; i++)
        assert_non_null(be[i] = enc_backend_cpu_new(i + 1));
    tu_rng r;
    tu_rng_seed(&r, 5);
    int rows = 600, dim = 160, nout = 200;
    size_t n = (size_t)rows * dim;
    float *in = malloc(n * 4), *w = malloc((size_t)nout * dim * 4), *g = malloc(n * 4);
    float *go = malloc((size_t)rows * nout * 4);
    tu_fill_uniform(&r, in, n), tu_fill_uniform(&r, w, (size_t)nout * dim);
    tu_fill_uniform(&r, g, n), tu_fill_uniform(&r, go, (size_t)rows * nout);
    float *res[3][5];
    int32_t *ids = malloc((size_t)rows * 4);
    for (int i = 0; i < rows; i++)
        ids[i] = (int32_t)tu_rng_below(&r, 50);
    for (int k = 0; k < 3; k++) {
        enc_backend *b = be[k];
        float *scr = b->iface.alloc(b, b->train.layernorm_backward_scratch(b, rows, dim) * 4);
        res[k][0] = calloc(n, 4), res[k][1] = calloc((size_t)dim, 4);
        res[k][2] = calloc((size_t)dim, 4), res[k][3] = calloc((size_t)nout * dim + nout, 4);
        res[k][4] = calloc((size_t)50 * dim + n, 4);
        b->train.layernorm_backward(b, res[k][0], res[k][1], res[k][2], g, in, w, rows, dim,
                                    1e-5f, scr);
        b->train.matmul_backward(b, NULL, res[k][3], res[k][3] + (size_t)nout * dim, go, 0, in,
                                 w, rows, dim, nout);
        b->train.embedding_backward(b, res[k][4], res[k][4] + (size_t)50 * dim, NULL, g, ids, 1,
                                    rows, dim);
        b->iface.free(b, scr);
    }
    for (int k = 1; k < 3; k++) {
        assert_memory_equal(res[k][0], res[0][0], n * 4);
        assert_memory_equal(res[k][1], res[0][1], (size_t)dim * 4);
        assert_memory_equal(res[k][2], res[0][2], (size_t)dim * 4);
        assert_memory_equal(res[k][3] + (size_t)nout * dim, res[0][3] + (size_t)nout * dim,
                            (size_t)nout * 4);
        assert_memory_equal(res[k][4], res[0][4], ((size_t)50 * dim + n) * 4);
        for (size_t i = 0; i < (size_t)nout * dim; i++)
            assert_true(fabsf(res[k][3][i] - res[0][3][i]) <= 1e-5f * (1 + fabsf(res[0][3][i])));
    }
    for (int k = 0; k < 3; k++) {
        for (int j = 0; j < 5; j++)
            free(res[k][j]);
        enc_backend_free(be[k]);
    }
    free(in), free(w), free(g), free(go), free(ids);
}

static const int one_thread = 1, three_threads = 3;

int main(void)
{
#define WITH_THREADS(test, n)                                                                 \
    cmocka_unit_test_prestate_setup_teardown(test, setup, teardown, (void *)(n))
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_train_table_complete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_matmul_backward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layernorm_backward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gelu_backward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_softmax_backward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attention_backward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_patch_embed_backward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vit_tokens_backward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_embedding_backward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cls_pool_l2norm_backward, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cls_attention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conv_backward, setup, teardown),
        WITH_THREADS(test_conv_backward, &three_threads),
        WITH_THREADS(test_matmul_backward, &one_thread),
        WITH_THREADS(test_matmul_backward, &three_threads),
        WITH_THREADS(test_layernorm_backward, &three_threads),
        WITH_THREADS(test_attention_backward, &one_thread),
        WITH_THREADS(test_attention_backward, &three_threads),
        WITH_THREADS(test_gelu_backward, &three_threads),
        cmocka_unit_test(test_thread_counts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
