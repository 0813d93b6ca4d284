/* loss.c - the contrastive (CLIP / InfoNCE) and 2D-3D consistency losses with
 * their backward twins, and ASG-style soft targets.  Formulas in train.h. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <cblas.h>

#include "train/train.h"

/* CLIP's cap on the logit scale: exp(s) never exceeds it. */
#define CLIP_MAX_SCALE 100.0f

size_t trn_loss_clip_work_floats(int B)
{
    assert(B >= 1);
    return 3 * (size_t)B * (size_t)B;
}

/* The scale as torch computes it: exp in float32, then clamp(max=100). */
static float clip_scale(float log_scale)
{
    float e = expf(log_scale);
    return e > CLIP_MAX_SCALE ? CLIP_MAX_SCALE : e;
}

/* T[i, j], with NULL standing for the identity. */
static inline double tgt(const float *T, int B, int i, int j)
{
    return T != NULL ? (double)T[(size_t)i * B + j] : (double)(i == j);
}

/* Row i of T summed (1 for the identity).  d CE(z, t)/dz = softmax(z) sum(t) - t,
 * which is torch's soft cross-entropy gradient even when a row does not
 * quite sum to 1. */
static double tgt_rowsum(const float *T, int B, int i)
{
    if (T == NULL)
        return 1.0;
    double s = 0;
    for (int j = 0; j < B; j++)
        s += T[(size_t)i * B + j];
    return s;
}

/* Softmax over n logits scale * x[k * stride] into p[k * stride]; returns
 * the log-sum-exp. */
static double softmax_strided(const float *x, size_t stride, int n, float scale, float *p)
{
    double mx = -INFINITY;
    for (int k = 0; k < n; k++) {
        double z = (double)(scale * x[k * stride]);
        if (z > mx)
            mx = z;
    }
    double sum = 0;
    for (int k = 0; k < n; k++)
        sum += exp((double)(scale * x[k * stride]) - mx);
    for (int k = 0; k < n; k++)
        p[k * stride] = (float)(exp((double)(scale * x[k * stride]) - mx) / sum);
    return mx + log(sum);
}

/* work = [D | P | Q], each [B, B]:
 *   D = a b^T (the cosines), P = row softmax of scale D, Q = column softmax. */
float trn_loss_clip_forward(const float *a, const float *b, int B, int E, float log_scale,
                            const float *targets, float *work)
{
    assert(a != NULL && b != NULL && work != NULL && B >= 1 && E >= 1);
    size_t BB = (size_t)B * B;
    float *D = work, *P = work + BB, *Q = work + 2 * BB;
    float scale = clip_scale(log_scale);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, B, E, 1.0f, a, E, b, E, 0.0f, D, B);

    double rows = 0, cols = 0;
    for (int i = 0; i < B; i++) {
        /* row i: a_i against every b_j, target row i of T */
        double lse = softmax_strided(D + (size_t)i * B, 1, B, scale, P + (size_t)i * B);
        double dot = 0;
        for (int j = 0; j < B; j++)
            dot += tgt(targets, B, i, j) * (double)(scale * D[(size_t)i * B + j]);
        rows += lse * tgt_rowsum(targets, B, i) - dot;
    }
    for (int j = 0; j < B; j++) {
        /* column j: b_j against every a_i, target row j of T */
        double lse = softmax_strided(D + j, (size_t)B, B, scale, Q + j);
        double dot = 0;
        for (int i = 0; i < B; i++)
            dot += tgt(targets, B, j, i) * (double)(scale * D[(size_t)i * B + j]);
        cols += lse * tgt_rowsum(targets, B, j) - dot;
    }
    return (float)((rows + cols) / (2.0 * B));
}

/* dL/dlogits G_ij = dloss / (2B) [(P_ij r_i - T_ij) + (Q_ij r_j - T_ji)],
 * r_i = sum_k T_ik; then logits = scale D gives
 *   da = scale G b,  db = scale G^T a,  dscale = sum G_ij D_ij,
 * and dlog_scale = exp(s) dscale where the clamp is inactive. */
void trn_loss_clip_backward(const float *a, const float *b, int B, int E, float log_scale,
                            const float *targets, float dloss, float *work, float *da,
                            float *db, float *dlog_scale)
{
    assert(a != NULL && b != NULL && work != NULL && B >= 1 && E >= 1);
    size_t BB = (size_t)B * B;
    const float *D = work, *Q = work + 2 * BB;
    float *G = work + BB; /* overwrites P in place */
    float scale = clip_scale(log_scale);
    double k = (double)dloss / (2.0 * B);
    double gd = 0;
    for (int i = 0; i < B; i++) {
        double ri = tgt_rowsum(targets, B, i);
        for (int j = 0; j < B; j++) {
            size_t ij = (size_t)i * B + j;
            double g = ((double)G[ij] * ri - tgt(targets, B, i, j)) +
                       ((double)Q[ij] * tgt_rowsum(targets, B, j) - tgt(targets, B, j, i));
            G[ij] = (float)(k * g);
            gd += k * g * (double)D[ij];
        }
    }
    if (da != NULL)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, E, B, scale, G, B, b, E,
                    1.0f, da, E);
    if (db != NULL)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, B, E, B, scale, G, B, a, E, 1.0f,
                    db, E);
    if (dlog_scale != NULL && expf(log_scale) <= CLIP_MAX_SCALE)
        *dlog_scale += (float)(gd * (double)scale);
}

/* ---- soft targets --------------------------------------------------------------------- */

/* Whether v occurs in s[0 .. n). */
static int has_tag(const int32_t *s, size_t n, int32_t v)
{
    for (size_t k = 0; k < n; k++)
        if (s[k] == v)
            return 1;
    return 0;
}

/* |set(x)|, |set(x) n set(y)|: a repeat counts once, at its first place. */
static void set_sizes(const int32_t *x, size_t nx, const int32_t *y, size_t ny, size_t *card,
                      size_t *inter)
{
    size_t c = 0, in = 0;
    for (size_t k = 0; k < nx; k++) {
        if (has_tag(x, k, x[k]))
            continue;
        c++;
        in += (size_t)has_tag(y, ny, x[k]);
    }
    *card = c;
    *inter = in;
}

static double jaccard(const int32_t *x, size_t nx, const int32_t *y, size_t ny)
{
    size_t cx, cy, in, unused;
    set_sizes(x, nx, y, ny, &cx, &in);
    set_sizes(y, ny, x, 0, &cy, &unused);
    size_t uni = cx + cy - in;
    return uni == 0 ? 1.0 : (double)in / (double)uni;
}

void trn_loss_soft_targets(const int32_t *tags, const size_t *off, int B, float alpha,
                           float *T)
{
    assert(off != NULL && T != NULL && B >= 1 && alpha >= 0);
    assert(tags != NULL || off[B] == 0);
    for (int i = 0; i < B; i++) {
        float *row = T + (size_t)i * B;
        const int32_t *ti = tags + off[i];
        size_t ni = off[i + 1] - off[i];
        double sum = 0;
        for (int j = 0; j < B; j++) {
            double w = 1.0;
            if (j != i)
                w = alpha == 0 ? 0.0
                               : (double)alpha * jaccard(ti, ni, tags + off[j], off[j + 1] - off[j]);
            row[j] = (float)w;
            sum += w;
        }
        for (int j = 0; j < B; j++)
            row[j] = (float)((double)row[j] / sum);
    }
}

/* ---- 2D-3D consistency ------------------------------------------------------------------ */

/* Component e of the mean of K slices, each E floats. */
static inline double slice_mean(const float *s, int K, int E, int e)
{
    double acc = 0;
    for (int k = 0; k < K; k++)
        acc += s[(size_t)k * E + e];
    return acc / K;
}

/* |v|^2, |m|^2 and v.m for one volume v and the mean m of its slices s;
 * m is recomputed where needed rather than kept, so nothing is allocated. */
static void cons_sums(const float *v, const float *s, int K, int E, double *vv, double *mm,
                      double *vm)
{
    double a = 0, b = 0, c = 0;
    for (int e = 0; e < E; e++) {
        double m = slice_mean(s, K, E, e);
        a += (double)v[e] * v[e];
        b += m * m;
        c += (double)v[e] * m;
    }
    *vv = a;
    *mm = b;
    *vm = c;
}

float trn_loss_consistency_forward(const float *vol, const float *slices, int B, int K, int E)
{
    assert(vol != NULL && slices != NULL && B >= 1 && K >= 1 && E >= 1);
    double total = 0;
    for (int b = 0; b < B; b++) {
        double vv, mm, vm;
        cons_sums(vol + (size_t)b * E, slices + (size_t)b * K * E, K, E, &vv, &mm, &vm);
        double nn = sqrt(vv) * sqrt(mm);
        total += 1.0 - (nn < 1e-12 ? 0.0 : vm / nn);
    }
    return (float)(total / B);
}

/* cos = v.m / (|v||m|):
 *   dcos/dv = m / (|v||m|) - cos v / |v|^2
 *   dcos/dm = v / (|v||m|) - cos m / |m|^2,  dm/ds_k = 1/K
 * and dL/dcos = -dloss / B. */
void trn_loss_consistency_backward(const float *vol, const float *slices, int B, int K, int E,
                                   float dloss, float *dvol, float *dslices)
{
    assert(vol != NULL && slices != NULL && B >= 1 && K >= 1 && E >= 1);
    for (int b = 0; b < B; b++) {
        const float *v = vol + (size_t)b * E;
        const float *s = slices + (size_t)b * K * E;
        double nv, nm, vm;
        cons_sums(v, s, K, E, &nv, &nm, &vm);
        double nn = sqrt(nv) * sqrt(nm);
        if (nn < 1e-12)
            continue;
        double cos = vm / nn;
        double g = -(double)dloss / B;
        for (int e = 0; e < E; e++) {
            double m = slice_mean(s, K, E, e);
            if (dvol != NULL)
                dvol[(size_t)b * E + e] += (float)(g * (m / nn - cos * v[e] / nv));
            if (dslices != NULL) {
                float ds = (float)(g * (v[e] / nn - cos * m / nm) / K);
                for (int k = 0; k < K; k++)
                    dslices[((size_t)b * K + k) * E + e] += ds;
            }
        }
    }
}

/* The mirror loss's margin z = s (n . a - p . a) of row i. */
static double side_margin(const float *a, const float *p, const float *n, int E, float scale)
{
    double cp = 0, cn = 0;
    for (int e = 0; e < E; e++) {
        cp += (double)a[e] * p[e];
        cn += (double)a[e] * n[e];
    }
    return (double)scale * (cn - cp);
}

static int side_rows(const unsigned char *use, int B)
{
    int r = 0;
    for (int i = 0; i < B; i++)
        r += use == NULL || use[i] != 0;
    return r;
}

float trn_loss_side_forward(const float *a, const float *p, const float *n,
                            const unsigned char *use, int B, int E, float scale)
{
    int R = side_rows(use, B);
    if (R == 0)
        return 0.0f;
    double loss = 0;
    for (int i = 0; i < B; i++) {
        if (use != NULL && !use[i])
            continue;
        size_t o = (size_t)i * E;
        double z = side_margin(a + o, p + o, n + o, E, scale);
        loss += z > 0 ? z + log1p(exp(-z)) : log1p(exp(z)); /* softplus, stably */
    }
    return (float)(loss / R);
}

void trn_loss_side_backward(const float *a, const float *p, const float *n,
                            const unsigned char *use, int B, int E, float scale, float dloss,
                            float *da, float *dp, float *dn)
{
    int R = side_rows(use, B);
    for (int i = 0; i < B && R > 0; i++) {
        if (use != NULL && !use[i])
            continue;
        size_t o = (size_t)i * E;
        double z = side_margin(a + o, p + o, n + o, E, scale);
        /* d softplus(z) / dz = sigmoid(z); dz/dn = s a, dz/dp = -s a, dz/da = s (n - p) */
        double g = (double)dloss / R * scale / (1.0 + exp(-z));
        for (int e = 0; e < E; e++) {
            if (da != NULL)
                da[o + e] += (float)(g * ((double)n[o + e] - p[o + e]));
            if (dp != NULL)
                dp[o + e] -= (float)(g * a[o + e]);
            if (dn != NULL)
                dn[o + e] += (float)(g * a[o + e]);
        }
    }
}

