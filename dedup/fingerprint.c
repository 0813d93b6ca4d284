/* fingerprint.c - acquisition-invariant fingerprints (see dedup.h).
 *
 * Volumes.  Read in RAS with the affine (so LPS storage, slice order and
 * the oblique grid are undone by the world coordinates), intensities to
 * [0, 1] (CT: the HU window -1000..400, which is calibrated; others:
 * percentile scaling).  The body is what is brighter than air; the air
 * inside it along each left-right row (lungs, airways) gives the anchor:
 * its centroid fixes the translation (a table offset, the patient's shift)
 * and the principal axis of its axial spread the rotation about z (the
 * patient turned on the table).  Every voxel is then splatted trilinearly
 * by its world position, relative to that frame, into a coarse grid of
 * cells; a cell's value is the weighted mean intensity, blurred [1 2 1]
 * along each axis, which averages the noise out and tolerates the few
 * millimetres a small rotation moves.  Cells that no voxel reached (out of
 * the field of view) read as air.  The grid is then made zero-mean and
 * unit-length, which removes what is left of gain and offset.
 *
 * The parameters below were chosen on synthetic rescans (docs/dedup.md):
 * extra channels (fat and bone fractions), a high-pass, finer cells or a
 * wider box all separated rescans from other patients less well.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedup/dedup.h"
#include "imageio/imageio.h"
#include "util/util.h"

#define DEDUP__MSG(name, msg) msg,
#define DEDUP__NAME(name, msg) "DEDUP_" #name,
static const char *const dedup_msgs[] = {DEDUP_ERRNO_MAP(DEDUP__MSG)};
static const char *const dedup_names[] = {DEDUP_ERRNO_MAP(DEDUP__NAME)};

const char *dedup_strerror(int c) { return util_errtab(dedup_msgs, DEDUP_NERR, c, "unknown error"); }
const char *dedup_errname(int c) { return util_errtab(dedup_names, DEDUP_NERR, c, "DEDUP_UNKNOWN"); }

#ifdef __SSE__
#include <xmmintrin.h>
#endif

typedef struct fp_params {
    int nx, ny, nz;
    float cell;      /* mm (volumes) */
    float body_thr;  /* [0, 1] intensity above which a voxel is body */
    int rotate;      /* align the axial principal axis */
    int blur;        /* [1 2 1] passes */
    int hp;          /* high-pass: subtract this many more [1 2 1] passes */
    int nch;         /* volume channels: intensity, then fat, bone fractions */
    float chw[3];    /* channel weights */
} fp_params;

static const fp_params FP_DEFAULT = {DEDUP_FP_VOL_NX, DEDUP_FP_VOL_NY, DEDUP_FP_VOL_NZ, DEDUP_FP_VOL_CELL,
                                     0.35f, 1, 1, 0, 1, {1, 1, 1}};

/* Blurs a grid in place with [1 2 1] / 4 along each axis (edges repeat). */
static void blur3(float *g, int nx, int ny, int nz, float *tmp)
{
    int n[3] = {nx, ny, nz};
    size_t st[3] = {1, (size_t)nx, (size_t)nx * ny};
    size_t tot = (size_t)nx * ny * nz;
    for (int a = 0; a < 3; a++) {
        if (n[a] < 2)
            continue;
        memcpy(tmp, g, tot * sizeof *g);
        for (size_t p = 0; p < tot; p++) {
            int c = (int)((p / st[a]) % (size_t)n[a]);
            float l = tmp[c > 0 ? p - st[a] : p], r = tmp[c + 1 < n[a] ? p + st[a] : p];
            g[p] = 0.25f * l + 0.5f * tmp[p] + 0.25f * r;
        }
    }
}

/* g minus g blurred by `passes` more [1 2 1] passes: keeps the local
 * detail, drops the gross shape every patient shares.  tmp: 2 grids. */
static void highpass(float *g, int nx, int ny, int nz, int passes, float *tmp)
{
    if (passes <= 0)
        return;
    size_t n = (size_t)nx * ny * nz;
    float *lo = tmp + n;
    memcpy(lo, g, n * sizeof *g);
    for (int b = 0; b < passes; b++)
        blur3(lo, nx, ny, nz, tmp);
    for (size_t i = 0; i < n; i++)
        g[i] -= lo[i];
}

/* Zero mean, unit length; a constant grid becomes all zeros but for a
 * unit first element, so that the vector is still normalised. */
static void normalise(float *g, size_t n)
{
    double m = 0, s = 0;
    for (size_t i = 0; i < n; i++)
        m += g[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++) {
        g[i] = (float)(g[i] - m);
        s += (double)g[i] * g[i];
    }
    if (s < 1e-20) {
        memset(g, 0, n * sizeof *g);
        g[0] = 1;
        return;
    }
    float inv = (float)(1 / sqrt(s));
    for (size_t i = 0; i < n; i++)
        g[i] *= inv;
}

/* The CT window -1000..400 HU to [0, 1], voxel by voxel, exactly as
 * img_ct_window maps a whole volume. */
#define FP_CT_LO (-1000.0f)
#define FP_CT_HI 400.0f
static inline float ct01(float x)
{
    const float inv = 1.0f / (FP_CT_HI - FP_CT_LO);
#ifdef __SSE__
    /* maxss and minss: no branch to mispredict on noisy air around
     * -1000 HU; maxss gives the bottom for NaN, as img_ct_window does
     * (it maps +inf to the bottom too, where this gives the top, but the
     * reader passes no infinite voxel) */
    __m128 v = _mm_max_ss(_mm_set_ss(x), _mm_set_ss(FP_CT_LO));
    x = _mm_cvtss_f32(_mm_min_ss(v, _mm_set_ss(FP_CT_HI)));
#else
    if (!isfinite(x))
        x = FP_CT_LO;
    x = x < FP_CT_LO ? FP_CT_LO : x > FP_CT_HI ? FP_CT_HI : x;
#endif
    return (x - FP_CT_LO) * inv;
}

/* The largest x with ct01(x) <= t (t in [0, 1)): ct01 never decreases, so
 * ct01(x) > t exactly when x > ct_below(t). */
static float ct_below(float t)
{
    float x = FP_CT_LO + t * (FP_CT_HI - FP_CT_LO);
    while (ct01(x) > t)
        x = nextafterf(x, -INFINITY);
    while (ct01(nextafterf(x, INFINITY)) <= t)
        x = nextafterf(x, INFINITY);
    return x;
}

/* Trilinear splat of nch values v at continuous cell coordinates (gx, gy,
 * gz): acc holds nch grids of ng cells, wt the weights.  Voxel by voxel:
 * the path of the multi-channel variants; one channel goes by splat_row. */
static void splatn(float *acc, float *wt, int nx, int ny, int nz, double gx, double gy, double gz,
                   const float *v, int nch, size_t ng)
{
    int x0 = (int)floor(gx), y0 = (int)floor(gy), z0 = (int)floor(gz);
    float fx = (float)(gx - x0), fy = (float)(gy - y0), fz = (float)(gz - z0);
    for (int dz = 0; dz < 2; dz++) {
        int z = z0 + dz;
        if (z < 0 || z >= nz)
            continue;
        float wz = dz ? fz : 1 - fz;
        for (int dy = 0; dy < 2; dy++) {
            int y = y0 + dy;
            if (y < 0 || y >= ny)
                continue;
            float wy = wz * (dy ? fy : 1 - fy);
            for (int dx = 0; dx < 2; dx++) {
                int x = x0 + dx;
                if (x < 0 || x >= nx)
                    continue;
                float w = wy * (dx ? fx : 1 - fx);
                size_t c = ((size_t)z * ny + y) * nx + x;
                for (int ch = 0; ch < nch; ch++)
                    acc[ch * ng + c] += w * v[ch];
                wt[c] += w;
            }
        }
    }
}

/* Adds the eight corner sums of cell (x0, y0, z0), those inside the grid,
 * into acc (one channel) and wt. */
static void flush_cell(float *acc, float *wt, int nx, int ny, int nz, int x0, int y0, int z0,
                       const float sa[8], const float sw[8])
{
    for (int q = 0; q < 8; q++) {
        int x = x0 + (q & 1), y = y0 + (q >> 1 & 1), z = z0 + (q >> 2);
        if (x < 0 || x >= nx || y < 0 || y >= ny || z < 0 || z >= nz)
            continue;
        size_t c = ((size_t)z * ny + y) * nx + x;
        acc[c] += sa[q];
        wt[c] += sw[q];
    }
}

/* splatn of one channel for a whole row: voxel i (of n) holds row[i]
 * (stored HU when ct, mapped here) and sits at g0 + i * st.  Only the voxels within reach of the grid are
 * visited, and the contributions of consecutive voxels in the same cell are
 * summed locally, so the grid is updated once per run of voxels rather than
 * once per voxel (a run is a few voxels at 6 mm, tens at 0.7 mm). */
static void splat_row(float *acc, float *wt, int nx, int ny, int nz, const double g0[3],
                      const double st[3], const float *row, int ct, int n)
{
    const int nn[3] = {nx, ny, nz};
    /* the i where -1 < g0 + i st < N on every axis, widened by one voxel
     * each side (the test below is exact) */
    double lo = 0, hi = n - 1;
    for (int a = 0; a < 3; a++) {
        if (st[a] == 0) {
            if (!(g0[a] > -1 && g0[a] < nn[a]))
                return;
            continue;
        }
        double t0 = (-1 - g0[a]) / st[a], t1 = (nn[a] - g0[a]) / st[a];
        if (t0 > t1) {
            double t = t0;
            t0 = t1;
            t1 = t;
        }
        lo = t0 - 1 > lo ? t0 - 1 : lo;
        hi = t1 + 1 < hi ? t1 + 1 : hi;
    }
    if (!(lo <= hi))
        return;
    int i0 = (int)lo, i1 = (int)hi;
    int cx = 0, cy = 0, cz = 0, have = 0;
    float sa[8] = {0}, sw[8] = {0};
    for (int i = i0; i <= i1; i++) {
        double gx = g0[0] + i * st[0], gy = g0[1] + i * st[1], gz = g0[2] + i * st[2];
        if (!(gx > -1 && gx < nx && gy > -1 && gy < ny && gz > -1 && gz < nz))
            continue;
        int x0 = (int)gx, y0 = (int)gy, z0 = (int)gz;
        x0 -= gx < x0;
        y0 -= gy < y0;
        z0 -= gz < z0;
        if (!have || x0 != cx || y0 != cy || z0 != cz) {
            if (have)
                flush_cell(acc, wt, nx, ny, nz, cx, cy, cz, sa, sw);
            memset(sa, 0, sizeof sa);
            memset(sw, 0, sizeof sw);
            cx = x0;
            cy = y0;
            cz = z0;
            have = 1;
        }
        float fx = (float)(gx - x0), fy = (float)(gy - y0), fz = (float)(gz - z0);
        float w[8];
        for (int dz = 0; dz < 2; dz++) {
            float wz = dz ? fz : 1 - fz;
            for (int dy = 0; dy < 2; dy++) {
                float wy = wz * (dy ? fy : 1 - fy);
                w[dz * 4 + dy * 2] = wy * (1 - fx);
                w[dz * 4 + dy * 2 + 1] = wy * fx;
            }
        }
        const float val = ct ? ct01(row[i]) : row[i];
        for (int q = 0; q < 8; q++) {
            sa[q] += w[q] * val;
            sw[q] += w[q];
        }
    }
    if (have)
        flush_cell(acc, wt, nx, ny, nz, cx, cy, cz, sa, sw);
}

/* A row of n voxels in [0, 1]: CT mapped into buf, others as they are. */
static const float *fp_row(const float *row, int ct, int n, float *buf)
{
    if (!ct)
        return row;
    for (int i = 0; i < n; i++)
        buf[i] = ct01(row[i]);
    return buf;
}

/* CT is windowed on the fly (no copy); other modalities are percentile
 * scaled in a copy. */
static int fp_volume(const img_vol *vin, enc_modality mod, const fp_params *pr, float *out,
                     const char *path, char *errbuf, size_t errlen)
{
    const int is_ct = mod == ENC_MOD_CT;
    img_vol copy = {0};
    const img_vol *vp = vin;
    if (!is_ct) {
        size_t nv = (size_t)vin->nx * vin->ny * vin->nz;
        copy = *vin;
        copy.data = malloc(nv * sizeof *copy.data);
        int rc = copy.data ? DEDUP_OK : DEDUP_NOMEM;
        if (!rc) {
            memcpy(copy.data, vin->data, nv * sizeof *copy.data);
            rc = img_mr_scale(&copy, 0.5f, 99.5f);
        }
        if (rc) {
            img_vol_free(&copy);
            if (errbuf)
                snprintf(errbuf, errlen, "%s: cannot scale intensities: %s", path,
                         enc_strerror(rc));
            return rc;
        }
        vp = &copy;
    }
    const img_vol v = *vp;
    const int nx = v.nx, ny = v.ny, nz = v.nz;
    const double(*A)[4] = v.affine;
    /* body: above the threshold in [0, 1]; for CT the same test on the
     * stored HU, against the largest value that maps to at most thr */
    const float thr = pr->body_thr, thr_raw = is_ct ? ct_below(thr) : thr;

    /* The anchor: air inside the body along each row, else the body, else
     * everything. */
    double s1[3] = {0}, sxx = 0, syy = 0, sxy = 0, cnt = 0;
    double b1[3] = {0}, bcnt = 0;
    for (int k = 0; k < nz; k++)
        for (int j = 0; j < ny; j++) {
            const float *row = v.data + ((size_t)k * ny + j) * nx;
            int i0 = -1, i1 = -1;
            for (int i = 0; i < nx; i++)
                if (row[i] > thr_raw) {
                    if (i0 < 0)
                        i0 = i;
                    i1 = i;
                }
            /* the body's and the air's voxel counts and sums of i and i^2
             * (exact in integers); the world sums follow in closed form,
             * the world position being w0 + A[.][0] * i along the row */
            long long nb = 0, nl = 0, sb = 0, sl = 0, sll = 0;
            for (int i = 0; i < nx; i++) {
                if (row[i] > thr_raw) {
                    nb++;
                    sb += i;
                } else if (i0 >= 0 && i > i0 && i < i1) {
                    nl++;
                    sl += i;
                    sll += (long long)i * i;
                }
            }
            double w0[3];
            for (int a = 0; a < 3; a++)
                w0[a] = A[a][1] * j + A[a][2] * k + A[a][3];
            const double ax = A[0][0], ay = A[1][0];
            for (int a = 0; a < 3; a++) {
                b1[a] += (double)nb * w0[a] + A[a][0] * (double)sb;
                s1[a] += (double)nl * w0[a] + A[a][0] * (double)sl;
            }
            sxx += (double)nl * w0[0] * w0[0] + 2 * w0[0] * ax * (double)sl + ax * ax * (double)sll;
            syy += (double)nl * w0[1] * w0[1] + 2 * w0[1] * ay * (double)sl + ay * ay * (double)sll;
            sxy += (double)nl * w0[0] * w0[1] + (w0[0] * ay + w0[1] * ax) * (double)sl +
                   ax * ay * (double)sll;
            bcnt += (double)nb;
            cnt += (double)nl;
        }
    double c[3] = {0}, th = 0;
    if (cnt >= 8) {
        for (int a = 0; a < 3; a++)
            c[a] = s1[a] / cnt;
        double cxx = sxx / cnt - c[0] * c[0], cyy = syy / cnt - c[1] * c[1],
               cxy = sxy / cnt - c[0] * c[1];
        if (pr->rotate && cxx > cyy)
            th = 0.5 * atan2(2 * cxy, cxx - cyy);
        if (th > 0.35)
            th = 0.35;
        if (th < -0.35)
            th = -0.35;
    } else if (bcnt >= 1) {
        for (int a = 0; a < 3; a++)
            c[a] = b1[a] / bcnt;
    } else {
        double mid[3] = {(nx - 1) / 2.0, (ny - 1) / 2.0, (nz - 1) / 2.0};
        for (int a = 0; a < 3; a++)
            c[a] = A[a][0] * mid[0] + A[a][1] * mid[1] + A[a][2] * mid[2] + A[a][3];
    }

    const int gx = pr->nx, gy = pr->ny, gz = pr->nz, nch = pr->nch;
    size_t ng = (size_t)gx * gy * gz;
    float *acc = calloc(ng * nch, sizeof *acc), *wt = calloc(2 * ng, sizeof *wt);
    /* a row in [0, 1], for the voxel-by-voxel path of several channels */
    float *rowbuf = nch > 1 ? malloc((size_t)nx * sizeof *rowbuf) : NULL;
    if (!acc || !wt || (nch > 1 && !rowbuf)) {
        free(acc);
        free(wt);
        free(rowbuf);
        img_vol_free(&copy);
        if (errbuf)
            snprintf(errbuf, errlen, "%s: out of memory", path);
        return DEDUP_NOMEM;
    }
    /* World -> grid: subtract the anchor, rotate by -th about z, scale to
     * cells with the anchor in the middle of the grid. */
    const double ct = cos(th), sn = sin(th), inv = 1.0 / pr->cell;
    const double ox = (gx - 1) / 2.0, oy = (gy - 1) / 2.0, oz = (gz - 1) / 2.0;
    /* fat -150..-50 HU, bone above 250 HU, in the window's [0, 1] */
    const float fat_lo = 850.0f / 1400, fat_hi = 950.0f / 1400, bone = 1250.0f / 1400;
    /* voxel -> grid is affine, so along a row the grid position is the
     * row's start plus i times the step of one voxel in i */
    double step[3];
    {
        double u[3] = {A[0][0], A[1][0], A[2][0]};
        step[0] = (ct * u[0] + sn * u[1]) * inv;
        step[1] = (-sn * u[0] + ct * u[1]) * inv;
        step[2] = u[2] * inv;
    }
    for (int k = 0; k < nz; k++)
        for (int j = 0; j < ny; j++) {
            const float *raw = v.data + ((size_t)k * ny + j) * nx;
            double w[3];
            for (int a = 0; a < 3; a++)
                w[a] = A[a][1] * j + A[a][2] * k + A[a][3] - c[a];
            const double g0x = (ct * w[0] + sn * w[1]) * inv + ox,
                         g0y = (-sn * w[0] + ct * w[1]) * inv + oy, g0z = w[2] * inv + oz;
            if (nch == 1) {
                const double g0[3] = {g0x, g0y, g0z};
                splat_row(acc, wt, gx, gy, gz, g0, step, raw, is_ct, nx);
                continue;
            }
            const float *row = fp_row(raw, is_ct, nx, rowbuf);
            for (int i = 0; i < nx; i++) {
                float val[3] = {row[i], row[i] >= fat_lo && row[i] <= fat_hi ? 1.0f : 0.0f,
                                row[i] > bone ? 1.0f : 0.0f};
                splatn(acc, wt, gx, gy, gz, g0x + i * step[0], g0y + i * step[1],
                       g0z + i * step[2], val, nch, ng);
            }
        }
    free(rowbuf);
    img_vol_free(&copy);
    for (int ch = 0; ch < nch; ch++) {
        float *g = acc + ch * ng;
        for (size_t p = 0; p < ng; p++)
            g[p] = wt[p] > 0.05f ? g[p] / wt[p] : 0.0f;
    }
    double wsum = 0;
    for (int ch = 0; ch < nch; ch++)
        wsum += (double)pr->chw[ch] * pr->chw[ch];
    for (int ch = 0; ch < nch; ch++) {
        float *g = acc + ch * ng;
        for (int b = 0; b < pr->blur; b++)
            blur3(g, gx, gy, gz, wt);
        highpass(g, gx, gy, gz, pr->hp, wt);
        normalise(g, ng);
        float f = (float)(pr->chw[ch] / sqrt(wsum));
        for (size_t p = 0; p < ng; p++)
            out[ch * ng + p] = g[p] * f;
    }
    free(acc);
    free(wt);
    return DEDUP_OK;
}

/* A file with explicit parameters (the variants of docs/dedup.md). */
int dedup__fingerprint_volume_p(const char *path, enc_modality mod, const fp_params *pr, float *out,
                              char *errbuf, size_t errlen);
int dedup__fingerprint_volume_p(const char *path, enc_modality mod, const fp_params *pr, float *out,
                              char *errbuf, size_t errlen)
{
    img_vol v = {0};
    int rc = img_read_volume(path, NULL, &v, errbuf, errlen);
    if (!rc)
        rc = fp_volume(&v, mod, pr, out, path, errbuf, errlen);
    img_vol_free(&v);
    return rc;
}

int dedup_fingerprint_volume(const char *path, enc_modality mod, float *out, char *errbuf,
                           size_t errlen)
{
    return dedup__fingerprint_volume_p(path, mod, &FP_DEFAULT, out, errbuf, errlen);
}

int dedup_fingerprint_volume_vol(const img_vol *v, const char *path, enc_modality mod, float *out,
                               char *errbuf, size_t errlen)
{
    return fp_volume(v, mod, &FP_DEFAULT, out, path, errbuf, errlen);
}

/* ---- radiographs ------------------------------------------------------------------ */

/* Radiographs.  A projection has no world coordinates and no calibrated
 * intensities, so the fingerprint is a picture, not a vector in a fixed
 * frame: the image's intensity ranks (which no monotone display curve,
 * exposure or gain changes), area-averaged to a 64 x 64 grid, smoothed
 * (Gaussian sigma 1) and band-passed (minus a sigma 1.5 blur of itself):
 * ribs, vessels, the edges of the lungs, heart and body, a few cells wide.
 * Two fingerprints are compared by aligning them: the best normalised
 * cross-correlation over in-plane rotations (+-8 degrees) and shifts
 * (+-8 cells down, +-4 across; the frame cuts the body at another height
 * in every shot), coarse to fine on a pyramid.  What no rigid alignment
 * undoes (a turn of the patient out of the plane moves ribs and spine
 * against each other) is what the threshold tolerates.  Parameters chosen
 * on synthetic rescans (docs/dedup.md). */

#define FPI_N DEDUP_FP_IMG_N

/* out[N x N] = area average of in[h x w] (row-major): each output cell is
 * the mean of the input it covers, with fractional weights at its edges
 * (an input smaller than the grid is stretched). */
static int area_resample(const float *in, int w, int h, float *out, int N)
{
    float *tmp = malloc((size_t)h * N * sizeof *tmp);
    if (!tmp)
        return DEDUP_NOMEM;
    /* rows: w -> N */
    for (int y = 0; y < h; y++)
        for (int o = 0; o < N; o++) {
            double a = (double)o * w / N, b = (double)(o + 1) * w / N, s = 0;
            for (int x = (int)floor(a); x < w && x < b; x++) {
                double lo = x > a ? x : a, hi = x + 1 < b ? x + 1 : b;
                s += (hi - lo) * in[(size_t)y * w + x];
            }
            tmp[(size_t)y * N + o] = (float)(s / (b - a));
        }
    /* columns: h -> N */
    for (int o = 0; o < N; o++) {
        double a = (double)o * h / N, b = (double)(o + 1) * h / N;
        for (int x = 0; x < N; x++) {
            double s = 0;
            for (int y = (int)floor(a); y < h && y < b; y++) {
                double lo = y > a ? y : a, hi = y + 1 < b ? y + 1 : b;
                s += (hi - lo) * tmp[(size_t)y * N + x];
            }
            out[(size_t)o * N + x] = (float)(s / (b - a));
        }
    }
    free(tmp);
    return DEDUP_OK;
}

/* Separable Gaussian blur of an N x N grid (edges repeat), into out. */
static void gauss2(const float *in, float *out, float *tmp, int N, double sigma)
{
    enum { RMAX = 8 };
    double k[2 * RMAX + 1], ks = 0;
    int r = (int)ceil(3 * sigma);
    if (r > RMAX)
        r = RMAX;
    for (int i = -r; i <= r; i++)
        ks += k[i + r] = exp(-0.5 * i * i / (sigma * sigma));
    for (int i = 0; i <= 2 * r; i++)
        k[i] /= ks;
    for (int y = 0; y < N; y++)
        for (int x = 0; x < N; x++) {
            double s = 0;
            for (int i = -r; i <= r; i++) {
                int xx = x + i < 0 ? 0 : x + i >= N ? N - 1 : x + i;
                s += k[i + r] * in[(size_t)y * N + xx];
            }
            tmp[(size_t)y * N + x] = (float)s;
        }
    for (int y = 0; y < N; y++)
        for (int x = 0; x < N; x++) {
            double s = 0;
            for (int i = -r; i <= r; i++) {
                int yy = y + i < 0 ? 0 : y + i >= N ? N - 1 : y + i;
                s += k[i + r] * tmp[(size_t)yy * N + x];
            }
            out[(size_t)y * N + x] = (float)s;
        }
}

int dedup__fingerprint_image_grid(const float *px, int w, int h, float *out);
int dedup__fingerprint_image_grid(const float *px, int w, int h, float *out)
{
    enum { BINS = 65536 };
    const size_t n = (size_t)w * h, N2 = (size_t)FPI_N * FPI_N;
    float lo = px[0], hi = px[0];
    for (size_t i = 1; i < n; i++) {
        lo = px[i] < lo ? px[i] : lo;
        hi = px[i] > hi ? px[i] : hi;
    }
    /* a bin holds its count, then (in place) the mid-rank of its value */
    union bin {
        uint32_t n;
        float rank;
    } *bins = calloc(BINS, sizeof *bins);
    float *rank = malloc(n * sizeof *rank), *g = malloc(4 * N2 * sizeof *g);
    if (!bins || !rank || !g) {
        free(bins);
        free(rank);
        free(g);
        return DEDUP_NOMEM;
    }
    /* mid-ranks through a 16-bit histogram: exact for 8- and 16-bit data */
    const double sc = hi > lo ? (BINS - 1) / ((double)hi - lo) : 0;
    for (size_t i = 0; i < n; i++)
        bins[(int)((px[i] - lo) * sc + 0.5)].n++;
    double run = 0;
    for (int b = 0; b < BINS; b++) {
        uint32_t c = bins[b].n;
        if (!c)
            continue; /* no pixel looks it up */
        bins[b].rank = (float)((run + 0.5 * c) / (double)n);
        run += c;
    }
    for (size_t i = 0; i < n; i++)
        rank[i] = bins[(int)((px[i] - lo) * sc + 0.5)].rank;
    free(bins);
    int rc = area_resample(rank, w, h, g, FPI_N);
    free(rank);
    if (rc) {
        free(g);
        return rc;
    }
    float *a = g + N2, *b = g + 2 * N2, *tmp = g + 3 * N2;
    gauss2(g, a, tmp, FPI_N, 1.0);
    gauss2(a, b, tmp, FPI_N, 1.5);
    for (size_t i = 0; i < N2; i++)
        out[i] = a[i] - b[i];
    normalise(out, N2);
    free(g);
    return DEDUP_OK;
}

int dedup_fingerprint_image(const char *path, float *out, char *errbuf, size_t errlen)
{
    img_vol v = {0};
    int rc = img_read_2d(path, NULL, &v, errbuf, errlen);
    if (!rc)
        rc = dedup_fingerprint_image_vol(&v, path, out, errbuf, errlen);
    img_vol_free(&v);
    return rc;
}

int dedup_fingerprint_image_vol(const img_vol *v, const char *path, float *out, char *errbuf,
                              size_t errlen)
{
    if (v->nx < 8 || v->ny < 8) {
        if (errbuf)
            snprintf(errbuf, errlen, "%s: %d x %d pixels, too small for a fingerprint (at least "
                     "8 x 8)", path, v->nx, v->ny);
        return DEDUP_INVAL;
    }
    /* A NIfTI radiograph in picture order, as a PNG one is stored, so that
     * the same radiograph in either format has the same fingerprint. */
    img_vol pic = *v;
    pic.data = NULL;
    if (v->format == IMG_FMT_NIFTI) {
        size_t n = (size_t)v->nx * v->ny;
        if (!(pic.data = malloc(n * sizeof *pic.data)))
            return util_errf(errbuf, errlen, DEDUP_NOMEM, "%s: out of memory", path);
        memcpy(pic.data, v->data, n * sizeof *pic.data);
        img_picture_order(&pic);
    }
    int rc = dedup__fingerprint_image_grid(pic.data ? pic.data : v->data, v->nx, v->ny, out);
    free(pic.data);
    if (rc && errbuf)
        snprintf(errbuf, errlen, "%s: %s", path, dedup_strerror(rc));
    return rc;
}

/* b rotated by `deg` about the grid's centre, bilinear, zero outside. */
static void rotate_grid(const float *b, int N, double deg, float *out)
{
    const double c = (N - 1) / 2.0, t = deg * M_PI / 180, cs = cos(t), sn = sin(t);
    for (int y = 0; y < N; y++)
        for (int x = 0; x < N; x++) {
            double u = cs * (x - c) - sn * (y - c) + c, v = sn * (x - c) + cs * (y - c) + c;
            int x0 = (int)floor(u), y0 = (int)floor(v);
            double fx = u - x0, fy = v - y0, s = 0;
            for (int dy = 0; dy < 2; dy++)
                for (int dx = 0; dx < 2; dx++) {
                    int xx = x0 + dx, yy = y0 + dy;
                    if (xx >= 0 && xx < N && yy >= 0 && yy < N)
                        s += (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy) * b[(size_t)yy * N + xx];
                }
            out[(size_t)y * N + x] = (float)s;
        }
}

/* 2 x 2 means: N x N -> N/2 x N/2. */
static void halve(const float *in, int N, float *out)
{
    int M = N / 2;
    for (int y = 0; y < M; y++)
        for (int x = 0; x < M; x++)
            out[(size_t)y * M + x] = 0.25f * (in[(size_t)(2 * y) * N + 2 * x] +
                                              in[(size_t)(2 * y) * N + 2 * x + 1] +
                                              in[(size_t)(2 * y + 1) * N + 2 * x] +
                                              in[(size_t)(2 * y + 1) * N + 2 * x + 1]);
}

/* NCC of a's window [m, N - m)^2 with br shifted by (dy, dx) (br read at
 * y + dy, x + dx; zero outside). */
static double ncc_at(const float *a, const float *br, int N, int m, int dy, int dx)
{
    double sa = 0, sb = 0, saa = 0, sbb = 0, sab = 0;
    int cnt = 0;
    for (int y = m; y < N - m; y++) {
        int yy = y + dy;
        const float *ar = a + (size_t)y * N;
        const float *brr = yy >= 0 && yy < N ? br + (size_t)yy * N : NULL;
        for (int x = m; x < N - m; x++) {
            int xx = x + dx;
            double va = ar[x], vb = brr && xx >= 0 && xx < N ? brr[xx] : 0;
            sa += va;
            sb += vb;
            saa += va * va;
            sbb += vb * vb;
            sab += va * vb;
            cnt++;
        }
    }
    double va = saa - sa * sa / cnt, vb = sbb - sb * sb / cnt;
    if (va <= 1e-20 || vb <= 1e-20)
        return 0;
    return (sab - sa * sb / cnt) / sqrt(va * vb);
}

typedef struct fpi_best {
    double s, deg;
    int dy, dx;
} fpi_best;

/* The best NCC of a against b rotated by each of degs[] and shifted by
 * up to +-ry rows and +-rx columns around (cy, cx). */
static void search(const float *a, const float *b, int N, int m, const double *degs, int nd, int cy,
                   int cx, int ry, int rx, float *rot, fpi_best *best)
{
    for (int k = 0; k < nd; k++) {
        rotate_grid(b, N, degs[k], rot);
        for (int dy = cy - ry; dy <= cy + ry; dy++)
            for (int dx = cx - rx; dx <= cx + rx; dx++) {
                double s = ncc_at(a, rot, N, m, dy, dx);
                if (s > best->s)
                    *best = (fpi_best){s, degs[k], dy, dx};
            }
    }
}

/* The final score weighs the cells of the scored window [6, 58)^2 of a by
 * a map learned on synthetic rescans: FPI_WG x FPI_WG control points,
 * bilinear between them, corners on the window's corner cells.  Fitted
 * (bench/fit_image_weights.py) to separate the ~2,300 hardest pairs of seed
 * 11 (every rescan pair, every other pair scoring >= 0.85 unweighted): a
 * smooth logistic loss around a threshold, over the log-weights, at each
 * pair's unweighted best alignment.  What it learned (weights 0.06 to 43):
 * the upper corners (shoulders) and two vertical bands through the middle
 * of the lung fields count most; the spine and mediastinum, the lateral
 * chest walls and the bottom row least: where a turn of the patient out of
 * the plane moves ribs against spine and outline between two shots
 * (docs/dedup.md).  The weights are the method's: fingerprints are
 * unchanged, scores and the threshold are not comparable with the
 * unweighted ones. */
#define FPI_WG 8
/* bench/fit_image_weights.py on seed 11, rows top to bottom */
#define FPI_WEIGHTS \
    15.2449f, 0.4912f, 0.2175f, 0.0657f, 0.0722f, 0.2312f, 0.9427f, 42.5017f, \
    2.9404f, 0.7754f, 0.9075f, 0.0572f, 0.0746f, 0.2708f, 0.3774f, 0.3600f, \
    0.3855f, 0.2359f, 12.1837f, 0.1689f, 3.4803f, 13.0002f, 0.2978f, 4.0113f, \
    0.5414f, 0.1029f, 1.2222f, 0.0674f, 0.1590f, 6.5345f, 0.1000f, 4.0957f, \
    1.9446f, 0.1267f, 12.0952f, 0.0864f, 0.5958f, 5.0153f, 0.1128f, 1.9562f, \
    8.2888f, 0.2490f, 4.2253f, 4.5761f, 4.1265f, 9.6484f, 0.0978f, 0.4681f, \
    0.7202f, 0.1904f, 5.6537f, 0.6380f, 0.5420f, 9.5985f, 0.1413f, 0.1975f, \
    0.1801f, 0.1060f, 0.3301f, 0.2659f, 0.1964f, 0.2919f, 0.0734f, 0.1483f
static const float FPI_W[FPI_WG * FPI_WG] = {FPI_WEIGHTS};

/* Weighted NCC of a's window [m, N - m)^2 with br shifted by (dy, dx), as
 * ncc_at, each cell counting by w (row-major over the window). */
static double wncc_at(const float *a, const float *br, int N, int m, int dy, int dx,
                      const float *w)
{
    double sw = 0, sa = 0, sb = 0;
    const int M = N - 2 * m;
    for (int pass = 0; pass < 2; pass++) {
        double ma = pass ? sa / sw : 0, mb = pass ? sb / sw : 0, sab = 0, saa = 0, sbb = 0;
        for (int y = m; y < N - m; y++) {
            int yy = y + dy;
            for (int x = m; x < N - m; x++) {
                int xx = x + dx;
                double wc = w[(size_t)(y - m) * M + (x - m)], va = a[(size_t)y * N + x];
                double vb = yy >= 0 && yy < N && xx >= 0 && xx < N ? br[(size_t)yy * N + xx] : 0;
                if (!pass) {
                    sw += wc;
                    sa += wc * va;
                    sb += wc * vb;
                } else {
                    sab += wc * (va - ma) * (vb - mb);
                    saa += wc * (va - ma) * (va - ma);
                    sbb += wc * (vb - mb) * (vb - mb);
                }
            }
        }
        if (pass)
            return saa <= 1e-20 || sbb <= 1e-20 ? 0 : sab / sqrt(saa * sbb);
    }
    return 0;
}

/* The cell weights over an M x M window, from the control points. */
static void fpi_weights(int M, float *w)
{
    for (int y = 0; y < M; y++) {
        double v = (double)y * (FPI_WG - 1) / (M - 1);
        int y0 = (int)v < FPI_WG - 1 ? (int)v : FPI_WG - 2;
        double fy = v - y0;
        for (int x = 0; x < M; x++) {
            double u = (double)x * (FPI_WG - 1) / (M - 1);
            int x0 = (int)u < FPI_WG - 1 ? (int)u : FPI_WG - 2;
            double fx = u - x0;
            const float *c = FPI_W + y0 * FPI_WG + x0;
            w[(size_t)y * M + x] =
                (float)((1 - fy) * ((1 - fx) * c[0] + fx * c[1]) +
                        fy * ((1 - fx) * c[FPI_WG] + fx * c[FPI_WG + 1]));
        }
    }
}

/* The best alignment of b to a without weights: every rotation at 32 x 32,
 * +-8 / +-4 cells of the full grid, then +-1 degree and +-1 cell at 64 x 64.
 * rot: N x N scratch. */
static fpi_best fpi_align(const float *a, const float *b, float *rot)
{
    enum { N = FPI_N, N2 = N / 2 };
    float a2[N2 * N2], b2[N2 * N2];
    static const double DEG[] = {-8, -6, -4, -2, 0, 2, 4, 6, 8};
    const int ND = (int)(sizeof DEG / sizeof DEG[0]);
    halve(a, N, a2);
    halve(b, N, b2);
    fpi_best h = {-2, 0, 0, 0};
    search(a2, b2, N2, 3, DEG, ND, 0, 0, 4, 2, rot, &h);
    double d3[3] = {h.deg - 1, h.deg, h.deg + 1};
    fpi_best f = {-2, 0, 0, 0};
    search(a, b, N, 6, d3, 3, 2 * h.dy, 2 * h.dx, 1, 1, rot, &f);
    return f;
}

/* The cell weights of the scored window, made once for every pair. */
enum { FPI_M = FPI_N - 12 };
static float fpi_w[FPI_M * FPI_M];
static pthread_once_t fpi_w_once = PTHREAD_ONCE_INIT;
static void fpi_w_init(void) { fpi_weights(FPI_M, fpi_w); }

float dedup_fingerprint_image_score(const float *a, const float *b, float floor_)
{
    enum { N = FPI_N };
    float rot[N * N];
    (void)floor_; /* no shortcut: a coarser level (16 x 16) averages the band away, and its
                     score fell up to 0.46 below the final one for rescans */
    pthread_once(&fpi_w_once, fpi_w_init);
    fpi_best f = fpi_align(a, b, rot);
    /* the learned cell weights, at that alignment */
    rotate_grid(b, N, f.deg, rot);
    return (float)wncc_at(a, rot, N, 6, f.dy, f.dx, fpi_w);
}

/* For bench/image_pairs.c, which exports pairs to fit the weights: the
 * unweighted score of the alignment, and b moved onto a's grid by it
 * (N x N, zero outside) when aligned is not NULL. */
float dedup__fingerprint_image_align(const float *a, const float *b, float *aligned);
float dedup__fingerprint_image_align(const float *a, const float *b, float *aligned)
{
    enum { N = FPI_N };
    float rot[N * N];
    fpi_best f = fpi_align(a, b, rot);
    if (aligned) {
        rotate_grid(b, N, f.deg, rot);
        for (int y = 0; y < N; y++)
            for (int x = 0; x < N; x++) {
                int yy = y + f.dy, xx = x + f.dx;
                aligned[(size_t)y * N + x] =
                    yy >= 0 && yy < N && xx >= 0 && xx < N ? rot[(size_t)yy * N + xx] : 0;
            }
    }
    return (float)f.s;
}
