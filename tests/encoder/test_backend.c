/* test_backend.c - every op of the CPU backend against a double-precision
 * reference written as plainly as possible (the definitions, loop by loop),
 * on random inputs.
 *
 * Tolerances, stated per op:
 *   matmul       |err| <= 2e-6 * sum_k |in_k w_k| + 1e-6 (float accumulation)
 *   layernorm    2e-5 absolute (outputs are O(1); inputs offset by 100 to
 *                catch one-pass variance)
 *   gelu         2e-7 * (1 + |x|) (A&S 7.1.26 erf is within 1.5e-7)
 *   softmax      1e-6 absolute on probabilities
 *   attention    2e-5 on outputs, 2e-6 on probabilities
 *   patch_embed  same bound as matmul
 *   the copies   exact
 *   rope         1e-6 (exact on a quarter turn);  swiglu 4e-7 * (1 + |y|)
 *   scale_add    1e-6;  attn_pool 2e-5 * (1 + |y|) (its folded keys and
 *                values against every key and value projected)
 * The same tables will check a CUDA backend against this one.
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
#include "encoder/encoder.h"
#include "testutil.h"

/* ---- helpers ---------------------------------------------------------------- */

typedef struct fx {
    enc_backend *be;
    tu_rng r;
} fx;

/* The backend has 2 threads, or *(int *)*state when a test gives a count
 * (1 and 3 run the threaded kernels' other splits). */
static int setup(void **state)
{
    int nt = *state != NULL ? *(const int *)*state : 2;
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    f->be = enc_backend_cpu_new(nt);
    assert_non_null(f->be);
    tu_rng_seed(&f->r, 12345);
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

/* Backend memory filled with n uniform values in [-a, a). */
static float *rnd(fx *f, size_t n, double a)
{
    float *p = f->be->iface.alloc(f->be, (n ? n : 1) * sizeof(float));
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (float)(a * (2.0 * tu_rng_uniform(&f->r) - 1.0));
    return p;
}

/* A malloc'd copy of x [n], to compare an in-place op's output with. */
static float *copy_of(const float *x, size_t n)
{
    float *c = malloc((n ? n : 1) * sizeof *c);
    assert_non_null(c);
    memcpy(c, x, n * sizeof *c);
    return c;
}

static void bfree(fx *f, void *p)
{
    f->be->iface.free(f->be, p);
}

/* Fails with the position and both values when |got - want| > tol. */
static void near(double got, double want, double tol, const char *what, size_t i)
{
    if (!(fabs(got - want) <= tol)) {
        print_error("%s[%zu]: got %.9g, want %.9g (|diff| %.3g > %.3g)\n", what, i, got, want,
                    fabs(got - want), tol);
        fail();
    }
}

/* ---- matmul ---------------------------------------------------------------- */

static void check_matmul(fx *f, int rows, int nin, int nout, int use_bias, int accumulate,
                         int ldo)
{
    enc_backend *be = f->be;
    int ld = ldo ? ldo : nout;
    float *in = rnd(f, (size_t)rows * nin, 1), *w = rnd(f, (size_t)nout * nin, 1);
    float *b = use_bias ? rnd(f, (size_t)nout, 1) : NULL;
    float *out = rnd(f, (size_t)rows * ld, 1);
    double *before = malloc((size_t)rows * ld * sizeof(double) + 1);
    assert_non_null(before);
    for (size_t i = 0; i < (size_t)rows * ld; i++)
        before[i] = out[i];
    be->iface.matmul(be, out, ldo, in, w, b, rows, nin, nout, accumulate);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < ld; j++) {
            size_t o = (size_t)r * ld + j;
            if (j >= nout) { /* the gap between rows is left alone */
                assert_true(out[o] == (float)before[o]);
                continue;
            }
            double s = b ? b[j] : 0, mag = b ? fabs(b[j]) : 0;
            if (accumulate)
                s += before[o], mag += fabs(before[o]);
            for (int k = 0; k < nin; k++) {
                double p = (double)in[(size_t)r * nin + k] * w[(size_t)j * nin + k];
                s += p;
                mag += fabs(p);
            }
            near(out[o], s, 2e-6 * mag + 1e-6, "matmul", o);
        }
    free(before);
    bfree(f, in), bfree(f, w), bfree(f, b), bfree(f, out);
}

static void test_matmul(void **state)
{
    fx *f = *state;
    static const int sz[][3] = {{1, 1, 1},   {1, 7, 3},    {7, 13, 5},   {33, 65, 17},
                                {130, 96, 200}, {3, 768, 2}, {257, 31, 129}};
    for (size_t i = 0; i < sizeof sz / sizeof sz[0]; i++)
        for (int bias = 0; bias < 2; bias++)
            for (int acc = 0; acc < 2; acc++) {
                check_matmul(f, sz[i][0], sz[i][1], sz[i][2], bias, acc, 0);
                check_matmul(f, sz[i][0], sz[i][1], sz[i][2], bias, acc, 3 * sz[i][2]);
            }
}

/* ---- layernorm ---------------------------------------------------------------- */

static void test_layernorm(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    static const int dims[] = {1, 2, 7, 64, 768, 1001};
    for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
        int rows = 9, dim = dims[di];
        size_t n = (size_t)rows * dim;
        float *x = rnd(f, n, 1), *w = rnd(f, (size_t)dim, 1), *b = rnd(f, (size_t)dim, 1);
        float *o = rnd(f, n, 1);
        for (size_t i = 0; i < n; i++) /* a large mean: a one-pass variance loses it */
            x[i] += 100.0f * (float)(i / (size_t)dim % 3);
        float eps = di % 2 ? 1e-5f : 1e-12f;
        be->iface.layernorm(be, o, x, w, b, rows, dim, eps);
        for (int r = 0; r < rows; r++) {
            const float *xr = x + (size_t)r * dim;
            double mean = 0, var = 0;
            for (int j = 0; j < dim; j++)
                mean += xr[j];
            mean /= dim;
            for (int j = 0; j < dim; j++)
                var += (xr[j] - mean) * (xr[j] - mean);
            var /= dim;
            for (int j = 0; j < dim; j++) {
                double want = (xr[j] - mean) / sqrt(var + eps) * w[j] + b[j];
                near(o[(size_t)r * dim + j], want, 2e-5, "layernorm", (size_t)r * dim + j);
            }
        }
        /* in place gives the same bits */
        be->iface.layernorm(be, x, x, w, b, rows, dim, eps);
        assert_memory_equal(x, o, n * sizeof(float));
        bfree(f, x), bfree(f, w), bfree(f, b), bfree(f, o);
    }
}

/* ---- gelu, add, softmax --------------------------------------------------------------- */

static void test_gelu(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    size_t n = 200001; /* odd, and more than one thread's chunk */
    float *x = rnd(f, n, 12), *o = rnd(f, n, 1);
    for (size_t i = 0; i < 20001; i++) /* a dense grid over [-10, 10] too */
        x[i] = -10.0f + (float)i * 0.001f;
    x[0] = 0.0f, x[1] = -0.0f, x[2] = 1e-30f, x[3] = -40.0f, x[4] = 40.0f, x[5] = 1e-6f;
    be->iface.gelu(be, o, x, n);
    for (size_t i = 0; i < n; i++) {
        double xd = x[i];
        double want = 0.5 * xd * (1.0 + erf(xd / sqrt(2.0)));
        near(o[i], want, 2e-7 * (1 + fabs(xd)), "gelu", i);
    }
    be->iface.gelu(be, x, x, n);
    assert_memory_equal(x, o, n * sizeof(float));
    bfree(f, x), bfree(f, o);
}

static void test_add(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    size_t rows = 300;
    int cols = 77;
    static const size_t brows[] = {300, 1, 3, 100};
    for (size_t k = 0; k < 4; k++) {
        float *a = rnd(f, rows * cols, 1), *b = rnd(f, brows[k] * cols, 1);
        float *o = rnd(f, rows * cols, 1);
        be->iface.add(be, o, a, b, rows, cols, brows[k]);
        for (size_t r = 0; r < rows; r++)
            for (int j = 0; j < cols; j++)
                assert_true(o[r * cols + j] == a[r * cols + j] + b[(r % brows[k]) * cols + j]);
        be->iface.add(be, a, a, b, rows, cols, brows[k]); /* in place */
        assert_memory_equal(a, o, rows * cols * sizeof(float));
        bfree(f, a), bfree(f, b), bfree(f, o);
    }
}

static void softmax_ref(const float *x, double *p, int n)
{
    double m = -INFINITY, s = 0;
    for (int j = 0; j < n; j++)
        m = x[j] > m ? x[j] : m;
    for (int j = 0; j < n; j++)
        s += (p[j] = m == -INFINITY ? 0 : exp((double)x[j] - m));
    for (int j = 0; j < n; j++)
        p[j] = s > 0 ? p[j] / s : 0;
}

static void test_softmax(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    static const int cols_list[] = {1, 5, 16, 197, 1000};
    for (size_t ci = 0; ci < 5; ci++) {
        int rows = 40, cols = cols_list[ci];
        size_t n = (size_t)rows * cols;
        float *x = rnd(f, n, 20), *o = rnd(f, n, 1);
        double *p = malloc((size_t)cols * sizeof(double));
        assert_non_null(p);
        for (int j = 0; j < cols; j++) {
            x[(size_t)1 * cols + j] = -INFINITY;          /* row 1: all -inf -> 0 */
            x[(size_t)2 * cols + j] += 1000.0f;           /* row 2: large, shifted */
            if (j % 3 == 1)
                x[(size_t)3 * cols + j] = -INFINITY;      /* row 3: some -inf */
            x[(size_t)4 * cols + j] = j % 2 ? -FLT_MAX : x[(size_t)4 * cols + j];
        }
        be->iface.softmax(be, o, x, rows, cols);
        for (int r = 0; r < rows; r++) {
            softmax_ref(x + (size_t)r * cols, p, cols);
            double sum = 0;
            for (int j = 0; j < cols; j++) {
                near(o[(size_t)r * cols + j], p[j], 1e-6, "softmax", (size_t)r * cols + j);
                sum += o[(size_t)r * cols + j];
            }
            if (r != 1)
                near(sum, 1.0, 1e-5, "softmax row sum", (size_t)r);
        }
        for (int j = 0; j < cols; j++)
            assert_true(o[(size_t)1 * cols + j] == 0.0f);
        be->iface.softmax(be, x, x, rows, cols);
        assert_memory_equal(x, o, n * sizeof(float));
        free(p);
        bfree(f, x), bfree(f, o);
    }
}

/* ---- attention ----------------------------------------------------------------------- */

/* HF semantics in double: scores = q.k / sqrt(hd) + (1 - mask) * -FLT_MAX. */
static void attention_ref(const float *qkv, const float *mask, int B, int T, int D, int H,
                          double *out, double *probs)
{
    int hd = D / H;
    double *s = malloc((size_t)T * sizeof(double));
    assert_non_null(s);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const float *q = qkv + ((size_t)b * T + i) * 3 * D + h * hd;
                double m = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    const float *k = qkv + ((size_t)b * T + j) * 3 * D + D + h * hd;
                    double d = 0;
                    for (int c = 0; c < hd; c++)
                        d += (double)q[c] * k[c];
                    d /= sqrt((double)hd);
                    if (mask)
                        d = (float)((float)d + (1.0f - mask[(size_t)b * T + j]) * -FLT_MAX);
                    s[j] = d;
                    m = d > m ? d : m;
                }
                for (int j = 0; j < T; j++)
                    sum += (s[j] = exp(s[j] - m));
                for (int j = 0; j < T; j++) {
                    s[j] /= sum;
                    probs[(((size_t)b * H + h) * T + i) * T + j] = s[j];
                }
                for (int c = 0; c < hd; c++) {
                    double o = 0;
                    for (int j = 0; j < T; j++)
                        o += s[j] * qkv[((size_t)b * T + j) * 3 * D + 2 * D + h * hd + c];
                    out[((size_t)b * T + i) * D + h * hd + c] = o;
                }
            }
    free(s);
}

static void check_attention(fx *f, int B, int T, int D, int H, int masked)
{
    enc_backend *be = f->be;
    float *qkv = rnd(f, (size_t)B * T * 3 * D, 2);
    float *mask = NULL;
    if (masked) {
        mask = rnd(f, (size_t)B * T, 1);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) /* b = 0: padding after 2/3; b = 1: all masked */
                mask[(size_t)b * T + t] = b == 1 ? 0.0f : t < (2 * T + 2) / 3 ? 1.0f : 0.0f;
    }
    size_t on = (size_t)B * T * D, pn = (size_t)B * H * T * T;
    float *out = rnd(f, on, 1), *out2 = rnd(f, on, 1), *probs = rnd(f, pn, 1);
    float *scr = rnd(f, be->iface.attention_scratch(be, B, T, H), 1);
    double *ro = malloc(on * sizeof(double)), *rp = malloc(pn * sizeof(double));
    assert_non_null(ro);
    assert_non_null(rp);
    attention_ref(qkv, mask, B, T, D, H, ro, rp);
    be->iface.attention(be, out, probs, qkv, mask, scr, B, T, D, H);
    be->tiled_attention = T >= 2048; /* long: the tiled path, when asked for */
    be->iface.attention(be, out2, NULL, qkv, mask, scr, B, T, D, H);
    be->tiled_attention = 0;
    for (size_t i = 0; i < on; i++)
        near(out[i], ro[i], 2e-5, "attention out", i);
    for (size_t i = 0; i < pn; i++)
        near(probs[i], rp[i], 2e-6, "attention probs", i);
    if (T < 2048) { /* one path: the same bits with and without probabilities */
        assert_memory_equal(out, out2, on * sizeof(float));
    } else { /* long: without probabilities the tiled path, within rounding */
        for (size_t i = 0; i < on; i++)
            near(out2[i], ro[i], 2e-5, "tiled attention out", i);
    }
    if (masked) { /* padded keys get exactly 0; an all-masked row is uniform, as in HF */
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++) {
                    float p0 = probs[(((size_t)0 * H + h) * T + i) * T + j];
                    if (j >= (2 * T + 2) / 3)
                        assert_true(p0 == 0.0f);
                    if (B > 1)
                        near(probs[(((size_t)1 * H + h) * T + i) * T + j], 1.0 / T, 1e-6,
                             "uniform", (size_t)j);
                }
    }
    free(ro), free(rp);
    bfree(f, qkv), bfree(f, mask), bfree(f, out), bfree(f, out2), bfree(f, probs);
    bfree(f, scr);
}

static void test_attention(void **state)
{
    fx *f = *state;
    check_attention(f, 1, 1, 8, 2, 0);
    check_attention(f, 2, 5, 16, 4, 0);
    check_attention(f, 2, 5, 16, 4, 1);
    check_attention(f, 3, 17, 24, 3, 1);
    check_attention(f, 2, 65, 64, 1, 1);
    check_attention(f, 1, 197, 96, 12, 0);
    check_attention(f, 2, 300, 32, 2, 1); /* several blocks of query rows */
    /* long sequences: the tiled path (keys ATT_KEYS at a time, online
     * softmax) when no probabilities are asked for, the last key block
     * partial, with and without a mask */
    check_attention(f, 1, 2100, 64, 2, 1);
    check_attention(f, 1, 2177, 96, 3, 0);
    check_attention(f, 2, 2048, 32, 1, 1); /* an all-masked row stays uniform */
}

/* ---- patch embedding --------------------------------------------------------------------- */

static void check_patch(fx *f, int B, int C, int Z, int Y, int X, int pz, int py, int px, int D,
                        int order)
{
    enc_backend *be = f->be;
    enc_patch_geom g = {C, {Z, Y, X}, {pz, py, px}, order};
    size_t N = enc_patch_count(&g), K = enc_patch_dim(&g);
    assert_int_equal(N, (size_t)(Z / pz) * (Y / py) * (X / px));
    assert_int_equal(K, (size_t)C * pz * py * px);
    size_t img = (size_t)C * Z * Y * X, bstride = (N + 1) * D; /* room for [CLS] */
    float *in = rnd(f, B * img, 1), *w = rnd(f, D * K, 1), *bias = rnd(f, (size_t)D, 1);
    float *out = rnd(f, B * bstride, 1), *scr = rnd(f, be->iface.patch_scratch(be, &g, B), 1);
    float *keep = copy_of(out, B * bstride);
    be->iface.patch_embed(be, out, bstride, in, w, bias, &g, B, D, scr);
    int gy = Y / py, gx = X / px;
    for (int b = 0; b < B; b++)
        for (size_t n = 0; n < N; n++) {
            int iz = (int)(n / (size_t)(gy * gx)), iy = (int)(n / gx % gy), ix = (int)(n % gx);
            for (int d = 0; d < D; d++) {
                /* the convolution (or MONAI's Rearrange + Linear), by definition */
                double s = bias[d], mag = fabs(bias[d]);
                for (int c = 0; c < C; c++)
                    for (int z = 0; z < pz; z++)
                        for (int y = 0; y < py; y++)
                            for (int x = 0; x < px; x++) {
                                size_t k = order == ENC_PATCH_CONV
                                               ? (((size_t)c * pz + z) * py + y) * px + x
                                               : (((size_t)z * py + y) * px + x) * C + c;
                                double v = in[(size_t)b * img +
                                              (((size_t)c * Z + iz * pz + z) * Y + iy * py + y) *
                                                  X +
                                              ix * px + x];
                                s += v * w[(size_t)d * K + k];
                                mag += fabs(v * w[(size_t)d * K + k]);
                            }
                size_t o = (size_t)b * bstride + n * D + d;
                near(out[o], s, 2e-6 * mag + 1e-6, "patch_embed", o);
            }
        }
    for (int b = 0; b < B; b++) /* the [CLS] slot after each image is untouched */
        for (int d = 0; d < D; d++) {
            size_t o = (size_t)b * bstride + N * D + d;
            assert_true(out[o] == keep[o]);
        }
    free(keep);
    bfree(f, in), bfree(f, w), bfree(f, bias), bfree(f, out), bfree(f, scr);
}

static void test_patch_embed(void **state)
{
    fx *f = *state;
    for (int order = 0; order < 2; order++) {
        check_patch(f, 2, 1, 1, 8, 8, 1, 4, 4, 6, order);      /* 2D */
        check_patch(f, 2, 3, 1, 12, 16, 1, 4, 4, 10, order);   /* 2D, RGB, not square */
        check_patch(f, 1, 3, 1, 32, 32, 1, 16, 16, 24, order); /* 2D ViT-B/16-like */
        check_patch(f, 2, 1, 8, 12, 16, 2, 3, 4, 7, order);    /* 3D, uneven patch */
        check_patch(f, 2, 2, 4, 8, 8, 2, 4, 4, 5, order);      /* 3D, 2 channels */
    }
}

/* ---- convolution -------------------------------------------------------------------------- */

/* conv against its definition (zero padding), for g and B images. */
static void check_conv(fx *f, int B, enc_conv_geom g)
{
    enc_backend *be = f->be;
    int o[3];
    enc_conv_out(&g, o);
    const size_t N = enc_conv_count(&g), K = enc_conv_dim(&g);
    assert_int_equal(N, (size_t)o[0] * o[1] * o[2]);
    assert_int_equal(K, (size_t)g.cin * g.kernel[0] * g.kernel[1] * g.kernel[2]);
    const size_t img = (size_t)g.cin * g.size[0] * g.size[1] * g.size[2];
    float *in = rnd(f, B * img, 1), *w = rnd(f, g.cout * K, 1), *bias = rnd(f, g.cout, 1);
    float *out = rnd(f, B * g.cout * N, 1), *scr = rnd(f, be->iface.conv_scratch(be, &g), 1);
    for (int nb = 0; nb < 2; nb++) { /* with and without a bias */
        const float *bb = nb ? NULL : bias;
        be->iface.conv(be, out, in, w, bb, &g, B, scr);
        for (int b = 0; b < B; b++)
            for (int co = 0; co < g.cout; co++)
                for (size_t n = 0; n < N; n++) {
                    int oz = (int)(n / ((size_t)o[1] * o[2])), oy = (int)(n / o[2] % o[1]);
                    int ox = (int)(n % o[2]);
                    double s = bb ? bb[co] : 0, mag = fabs(s);
                    for (int c = 0; c < g.cin; c++)
                        for (int a = 0; a < g.kernel[0]; a++)
                            for (int y = 0; y < g.kernel[1]; y++)
                                for (int x = 0; x < g.kernel[2]; x++) {
                                    int iz = oz * g.stride[0] - g.pad[0] + a;
                                    int iy = oy * g.stride[1] - g.pad[1] + y;
                                    int ix = ox * g.stride[2] - g.pad[2] + x;
                                    if (iz < 0 || iz >= g.size[0] || iy < 0 || iy >= g.size[1] ||
                                        ix < 0 || ix >= g.size[2])
                                        continue;
                                    double v = in[(size_t)b * img +
                                                  (((size_t)c * g.size[0] + iz) * g.size[1] + iy) *
                                                      g.size[2] +
                                                  ix];
                                    double ww = w[(size_t)co * K +
                                                  (((size_t)c * g.kernel[0] + a) * g.kernel[1] + y) *
                                                      g.kernel[2] +
                                                  x];
                                    s += v * ww;
                                    mag += fabs(v * ww);
                                }
                    size_t oi = ((size_t)b * g.cout + co) * N + n;
                    near(out[oi], s, 2e-6 * mag + 1e-6, "conv", oi);
                }
    }
    bfree(f, in), bfree(f, w), bfree(f, bias), bfree(f, out), bfree(f, scr);
}

static void test_conv(void **state)
{
    fx *f = *state;
    /* 2D stem layers: kernel 3, stride 2, padding 1, even and odd sizes */
    check_conv(f, 2, (enc_conv_geom){1, 4, {1, 16, 16}, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}});
    check_conv(f, 3, (enc_conv_geom){3, 5, {1, 9, 12}, {1, 3, 3}, {1, 2, 2}, {0, 1, 1}});
    /* 3D, anisotropic kernel and stride, no padding on one axis */
    check_conv(f, 2, (enc_conv_geom){2, 3, {6, 8, 10}, {3, 3, 5}, {2, 1, 2}, {1, 0, 2}});
    /* large enough to split over the team (N K cout > 2^18) */
    check_conv(f, 2, (enc_conv_geom){4, 8, {8, 32, 32}, {3, 3, 3}, {1, 1, 1}, {1, 1, 1}});
    /* a 1 x 1 x 1 convolution is a per-voxel matrix product */
    check_conv(f, 1, (enc_conv_geom){3, 2, {2, 3, 4}, {1, 1, 1}, {1, 1, 1}, {0, 0, 0}});
}

/* ---- the rest ---------------------------------------------------------------------------- */

static void test_vit_tokens(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    int B = 3, N = 5, D = 7, T = N + 1;
    for (int has_cls = 0; has_cls < 2; has_cls++) {
        float *x = rnd(f, (size_t)B * T * D, 1), *cls = rnd(f, (size_t)D, 1);
        float *pos = rnd(f, (size_t)(N + has_cls) * D, 1);
        float *x0 = copy_of(x, (size_t)B * T * D);
        be->iface.vit_tokens(be, x, cls, pos, has_cls, B, N, D);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                for (int d = 0; d < D; d++) {
                    size_t o = ((size_t)b * T + t) * D + d;
                    float base = t == 0 ? cls[d] : x0[o];
                    float want = has_cls ? base + pos[(size_t)t * D + d]
                                 : t == 0 ? base
                                          : base + pos[(size_t)(t - 1) * D + d];
                    assert_true(x[o] == want);
                }
        free(x0);
        bfree(f, x), bfree(f, cls), bfree(f, pos);
    }
}

static void test_embedding(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    int B = 2, L = 6, D = 9, V = 11;
    float *table = rnd(f, (size_t)V * D, 1), *pos = rnd(f, (size_t)(L + 3) * D, 1);
    float *type = rnd(f, (size_t)D, 1), *out = rnd(f, (size_t)B * L * D, 1);
    int32_t ids[12] = {0, 10, 3, 3, 7, 1, 10, 0, 0, 5, 2, 9};
    for (int variant = 0; variant < 3; variant++) {
        const float *p = variant >= 1 ? pos : NULL, *ty = variant == 2 ? type : NULL;
        be->iface.embedding(be, out, ids, table, p, ty, B, L, D);
        for (int b = 0; b < B; b++)
            for (int l = 0; l < L; l++)
                for (int d = 0; d < D; d++) {
                    float want = table[(size_t)ids[b * L + l] * D + d];
                    if (p)
                        want += p[(size_t)l * D + d];
                    if (ty)
                        want += ty[d];
                    assert_true(out[((size_t)b * L + l) * D + d] == want);
                }
    }
    bfree(f, table), bfree(f, pos), bfree(f, type), bfree(f, out);
}

static void test_cls_pool_l2norm_copy(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    int B = 4, T = 3, D = 10;
    float *x = rnd(f, (size_t)B * T * D, 1), *o = rnd(f, (size_t)B * D, 1);
    be->iface.cls_pool(be, o, x, B, T, D);
    for (int b = 0; b < B; b++)
        assert_memory_equal(o + (size_t)b * D, x + (size_t)b * T * D, D * sizeof(float));

    for (int d = 0; d < D; d++)
        o[(size_t)2 * D + d] = 0.0f; /* a zero row stays zero (norm clamped to 1e-12) */
    o[3 * D] = 1e-30f;
    float *n = rnd(f, (size_t)B * D, 1);
    be->iface.l2norm(be, n, o, B, D);
    for (int b = 0; b < B; b++) {
        double ss = 0;
        for (int d = 0; d < D; d++)
            ss += (double)o[(size_t)b * D + d] * o[(size_t)b * D + d];
        double nrm = sqrt(ss) > 1e-12 ? sqrt(ss) : 1e-12;
        for (int d = 0; d < D; d++)
            near(n[(size_t)b * D + d], o[(size_t)b * D + d] / nrm, 1e-6, "l2norm",
                 (size_t)b * D + d);
    }
    for (int d = 0; d < D; d++)
        assert_true(n[(size_t)2 * D + d] == 0.0f);
    be->iface.l2norm(be, o, o, B, D);
    assert_memory_equal(o, n, (size_t)B * D * sizeof(float));

    float *c = rnd(f, (size_t)B * T * D, 1);
    be->iface.copy(be, c, x, (size_t)B * T * D);
    assert_memory_equal(c, x, (size_t)B * T * D * sizeof(float));
    float h[5] = {1, 2, 3, 4, 5}, back[5];
    assert_int_equal(be->iface.upload(be, c, h, sizeof h), ENC_OK);
    assert_int_equal(be->iface.download(be, back, c, sizeof h), ENC_OK);
    assert_memory_equal(back, h, sizeof h);
    assert_int_equal(be->iface.sync(be), ENC_OK);
    bfree(f, x), bfree(f, o), bfree(f, n), bfree(f, c);
}

/* ---- EVA / Primus ops (COLIPRI) -------------------------------------------------------- */

/* rope: a hand-checked rotation first (a quarter turn maps (1, 0) to (0, 1)
 * and (0, 1) to (-1, 0); v and the gap between rows are left alone), then
 * random tables against the definition. */
static void test_rope(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    /* B 1, T 1, D 4, H 1: hd 4, two pairs; ld 13 leaves a gap column */
    float qkv[13] = {1, 0, 0, 1, 1, 0, 2, 3, 7, 7, 7, 7, 9};
    const float cs[4] = {0, 1, 1, 0}; /* pair 0 a quarter turn (c 0, s 1), pair 1 none */
    be->iface.rope(be, qkv, 13, cs, 1, 1, 4, 1);
    const float want[13] = {0, 1, 0, 1, 0, 1, 2, 3, 7, 7, 7, 7, 9};
    for (int i = 0; i < 13; i++)
        near(qkv[i], want[i], 0, "rope (quarter turn)", (size_t)i);

    const int B = 2, T = 7, D = 24, H = 2, hd = D / H, ld = 3 * D;
    float *x = rnd(f, (size_t)B * T * ld, 1), *c = rnd(f, (size_t)T * hd, 1);
    for (int t = 0; t < T; t++) /* a real table: c^2 + s^2 = 1 */
        for (int p = 0; p < hd / 2; p++) {
            double a = 3.0 * c[t * hd + p];
            c[t * hd + p] = (float)cos(a);
            c[t * hd + hd / 2 + p] = (float)sin(a);
        }
    float *keep = copy_of(x, (size_t)B * T * ld);
    be->iface.rope(be, x, ld, c, B, T, D, H);
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++)
            for (int j = 0; j < ld; j++) {
                size_t o = ((size_t)b * T + t) * ld + j;
                double w = keep[o];
                if (j < 2 * D) {
                    int p = j % hd / 2, even = j % 2 == 0;
                    double cc = c[t * hd + p], ss = c[t * hd + hd / 2 + p];
                    double a = keep[o - !even], bb = keep[o + even];
                    w = even ? a * cc - bb * ss : bb * cc + a * ss;
                }
                near(x[o], w, 1e-6, "rope", o);
            }
    free(keep);
    bfree(f, x), bfree(f, c);
}

static void test_swiglu_scale_add(void **state)
{
    fx *f = *state;
    enc_backend *be = f->be;
    const size_t n = 70001; /* threads and a partial chunk */
    float *g = rnd(f, n, 12), *x = rnd(f, n, 2), *out = rnd(f, n, 1);
    g[0] = -100, g[1] = 100, g[2] = 0; /* silu's tails and its zero */
    be->iface.swiglu(be, out, g, x, n);
    for (size_t i = 0; i < n; i++) {
        double w = (double)g[i] / (1.0 + exp(-(double)g[i])) * x[i];
        near(out[i], w, 4e-7 * (1 + fabs(w)), "swiglu", i);
    }
    be->iface.swiglu(be, g, g, x, n); /* in place */
    for (size_t i = 0; i < n; i++)
        assert_true(g[i] == out[i]);

    const int rows = 300, cols = 37;
    float *y = rnd(f, (size_t)rows * cols, 1), *gam = rnd(f, (size_t)cols, 1);
    float *acc = rnd(f, (size_t)rows * cols, 1);
    double *before = malloc((size_t)rows * cols * sizeof(double));
    assert_non_null(before);
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        before[i] = acc[i];
    be->iface.scale_add(be, acc, y, gam, (size_t)rows, cols);
    for (size_t i = 0; i < (size_t)rows * cols; i++)
        near(acc[i], before[i] + (double)gam[i % cols] * y[i], 1e-6, "scale_add", i);
    free(before);
    bfree(f, g), bfree(f, x), bfree(f, out), bfree(f, y), bfree(f, gam), bfree(f, acc);
}

/* attn_pool against nn.MultiheadAttention written out: every key and value
 * projected, the bias of the keys included. */
static void check_attn_pool(fx *f, int B, int T, int E, int H, int masked)
{
    enc_backend *be = f->be;
    const int hd = E / H;
    float *x = rnd(f, (size_t)B * T * E, 1), *win = rnd(f, 3 * (size_t)E * E, 0.3);
    float *bin = rnd(f, 3 * (size_t)E, 0.5), *wout = rnd(f, (size_t)E * E, 0.3);
    float *bout = rnd(f, (size_t)E, 0.5), *out = rnd(f, (size_t)B * E, 1);
    float *mask = masked ? rnd(f, (size_t)B * T, 1) : NULL;
    for (int i = 0; masked && i < B * T; i++)
        mask[i] = i % T == 0 || mask[i] > 0 ? 1.0f : 0.0f; /* row 0 always kept */
    float *scr = rnd(f, be->iface.attn_pool_scratch(be, T, E, H), 1);
    be->iface.attn_pool(be, out, x, mask, win, bin, wout, bout, B, T, E, H, scr);
    double *m = malloc((size_t)E * sizeof(double)), *q = malloc((size_t)E * sizeof(double));
    double *k = malloc((size_t)T * E * sizeof(double)), *v = malloc((size_t)T * E * sizeof(double));
    double *o = malloc((size_t)E * sizeof(double)), *a = malloc((size_t)T * sizeof(double));
    assert_true(m && q && k && v && o && a);
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * T * E;
        double kept = 0;
        for (int e = 0; e < E; e++)
            m[e] = 0;
        for (int j = 0; j < T; j++)
            if (!mask || mask[b * T + j] > 0) {
                kept++;
                for (int e = 0; e < E; e++)
                    m[e] += xb[(size_t)j * E + e];
            }
        for (int e = 0; e < E; e++)
            m[e] /= kept;
        for (int c = 0; c < E; c++) {
            q[c] = bin[c];
            for (int e = 0; e < E; e++)
                q[c] += (double)win[(size_t)c * E + e] * m[e];
        }
        for (int j = 0; j < T; j++)
            for (int c = 0; c < E; c++) {
                double sk = bin[E + c], sv = bin[2 * E + c];
                for (int e = 0; e < E; e++) {
                    sk += (double)win[((size_t)E + c) * E + e] * xb[(size_t)j * E + e];
                    sv += (double)win[(2 * (size_t)E + c) * E + e] * xb[(size_t)j * E + e];
                }
                k[(size_t)j * E + c] = sk, v[(size_t)j * E + c] = sv;
            }
        for (int h = 0; h < H; h++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < T; j++) {
                double s = 0;
                for (int c = h * hd; c < (h + 1) * hd; c++)
                    s += q[c] * k[(size_t)j * E + c];
                a[j] = mask && !(mask[b * T + j] > 0) ? -INFINITY : s / sqrt((double)hd);
                mx = a[j] > mx ? a[j] : mx;
            }
            for (int j = 0; j < T; j++)
                sum += (a[j] = exp(a[j] - mx));
            for (int c = h * hd; c < (h + 1) * hd; c++) {
                o[c] = 0;
                for (int j = 0; j < T; j++)
                    o[c] += a[j] / sum * v[(size_t)j * E + c];
            }
        }
        for (int c = 0; c < E; c++) {
            double w = bout[c];
            for (int e = 0; e < E; e++)
                w += (double)wout[(size_t)c * E + e] * o[e];
            near(out[(size_t)b * E + c], w, 2e-5 * (1 + fabs(w)), "attn_pool", (size_t)b * E + c);
        }
    }
    free(m), free(q), free(k), free(v), free(o), free(a);
    bfree(f, x), bfree(f, win), bfree(f, bin), bfree(f, wout), bfree(f, bout), bfree(f, out);
    bfree(f, mask), bfree(f, scr);
}

static void test_attn_pool(void **state)
{
    fx *f = *state;
    check_attn_pool(f, 1, 1, 4, 1, 0);
    check_attn_pool(f, 2, 9, 12, 3, 0);
    check_attn_pool(f, 3, 17, 24, 4, 1);
    check_attn_pool(f, 2, 130, 48, 12, 1);
}

/* Every slot of the table is filled: a backend with a hole would crash. */
static void test_table_complete(void **state)
{
    fx *f = *state;
    const enc_backend_i *t = &f->be->iface;
    assert_string_equal(t->name, "cpu");
    assert_int_equal(t->host_memory, 1);
    void (*const fns[])(void) = {
        (void (*)(void))t->alloc,      (void (*)(void))t->free,
        (void (*)(void))t->upload,     (void (*)(void))t->download,
        (void (*)(void))t->sync,       (void (*)(void))t->attention_scratch,
        (void (*)(void))t->patch_scratch, (void (*)(void))t->copy,
        (void (*)(void))t->matmul,     (void (*)(void))t->layernorm,
        (void (*)(void))t->gelu,       (void (*)(void))t->add,
        (void (*)(void))t->softmax,    (void (*)(void))t->attention,
        (void (*)(void))t->patch_embed, (void (*)(void))t->vit_tokens,
        (void (*)(void))t->embedding,  (void (*)(void))t->cls_pool,
        (void (*)(void))t->l2norm,     (void (*)(void))t->conv_scratch,
        (void (*)(void))t->conv,       (void (*)(void))t->rope,
        (void (*)(void))t->swiglu,     (void (*)(void))t->scale_add,
        (void (*)(void))t->attn_pool_scratch, (void (*)(void))t->attn_pool,
    };
    for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++)
        assert_non_null(fns[i]);
    /* name + host_memory + the pointers: an op added to the table must be
     * added here (and to every backend) too */
    assert_int_equal(sizeof fns / sizeof fns[0] * sizeof(void *) + 2 * sizeof(void *),
                     sizeof *t);
    enc_backend_free(NULL);
    enc_backend *one = enc_backend_cpu_new(0); /* all cores */
    assert_non_null(one);
    assert_true(one->nthreads >= 1);
    enc_backend_free(one);
    enc_backend *two = enc_backend_cpu_new(2);
    assert_non_null(two);
    enc_backend_free(two);
}

static const int one_thread = 1, three_threads = 3;

int main(void)
{
#define WITH_THREADS(test, n)                                                                 \
    cmocka_unit_test_prestate_setup_teardown(test, setup, teardown, (void *)(n))
    const struct CMUnitTest tests[] = {
        WITH_THREADS(test_matmul, &one_thread),
        WITH_THREADS(test_matmul, &three_threads),
        WITH_THREADS(test_attention, &one_thread),
        WITH_THREADS(test_attention, &three_threads),
        WITH_THREADS(test_patch_embed, &three_threads),
        WITH_THREADS(test_conv, &three_threads),
        WITH_THREADS(test_conv, &one_thread),
        WITH_THREADS(test_gelu, &three_threads),
        cmocka_unit_test_setup_teardown(test_matmul, setup, teardown),
        cmocka_unit_test_setup_teardown(test_layernorm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gelu, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add, setup, teardown),
        cmocka_unit_test_setup_teardown(test_softmax, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_patch_embed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_conv, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vit_tokens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_embedding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cls_pool_l2norm_copy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rope, setup, teardown),
        cmocka_unit_test_setup_teardown(test_swiglu_scale_add, setup, teardown),
        cmocka_unit_test_setup_teardown(test_attn_pool, setup, teardown),
        WITH_THREADS(test_rope, &three_threads),
        cmocka_unit_test_setup_teardown(test_table_complete, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
