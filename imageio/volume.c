/* volume.c - operations on a decoded image (imageio.h): the volume's
 * memory, trilinear resampling to a target spacing and grid, and the
 * intensity mappings for CT (HU window) and MR (percentile scaling).
 * The readers are nifti.c and png.c; the error tables are here.
 */
#include "imageio/imageio.h"
#include "util/util.h"

#include <assert.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define IMG__MSG(name, msg) msg,
#define IMG__NAME(name, msg) "IMG_" #name,
static const char *const img_msgs[] = {IMG_ERRNO_MAP(IMG__MSG)};
static const char *const img_names[] = {IMG_ERRNO_MAP(IMG__NAME)};

const char *img_strerror(int code) { return util_errtab(img_msgs, IMG_NERR, code, "unknown error"); }
const char *img_errname(int code) { return util_errtab(img_names, IMG_NERR, code, "IMG_UNKNOWN"); }

void img_vol_free(img_vol *v)
{
    if (v == NULL)
        return;
    free(v->data);
    memset(v, 0, sizeof *v);
}

/* ---- resampling ------------------------------------------------------------- */

/* Where each output index along one axis samples the input: the two
 * neighbouring input voxels, the weight of the upper one, and whether the
 * position lies in the input's field of view at all. */
typedef struct axis_map {
    int i0, i1;
    float w;
    int inside;
} axis_map;

static void axis_plan(int n, int N, double r, axis_map *m)
{
    double c0 = (n - 1) / 2.0 - (N - 1) / 2.0 * r;
    for (int o = 0; o < N; o++) {
        double c = c0 + o * r;
        /* 1e-9 forgives the rounding of r on the very edge of the field */
        m[o].inside = c >= -0.5 - 1e-9 && c <= n - 0.5 + 1e-9;
        double cc = c < 0 ? 0 : c > n - 1 ? n - 1 : c;
        int i0 = (int)floor(cc);
        if (i0 > n - 2)
            i0 = n >= 2 ? n - 2 : 0;
        m[o].i0 = i0;
        m[o].i1 = i0 + 1 < n ? i0 + 1 : i0;
        m[o].w = (float)(cc - i0);
    }
}

int img_resample(const img_vol *in, const float target_spacing[3], int nx, int ny, int nz,
                     img_vol *out, char *errbuf, size_t errlen)
{
    char *eb = errbuf;
    size_t el = errlen;
    if (in == NULL || in->data == NULL || target_spacing == NULL || out == NULL)
        return util_errf(eb, el, IMG_INVAL, "resample: NULL argument");
    const int nin[3] = {in->nx, in->ny, in->nz}, nout[3] = {nx, ny, nz};
    for (int a = 0; a < 3; a++) {
        if (nin[a] < 1)
            return util_errf(eb, el, IMG_INVAL, "resample: input size[%d] = %d", a, nin[a]);
        if (nout[a] < 1)
            return util_errf(eb, el, IMG_INVAL, "resample: output size[%d] = %d", a, nout[a]);
        if (!(isfinite(in->spacing[a]) && in->spacing[a] > 0))
            return util_errf(eb, el, IMG_INVAL, "resample: input spacing[%d] = %g", a,
                        (double)in->spacing[a]);
        if (!(isfinite(target_spacing[a]) && target_spacing[a] > 0))
            return util_errf(eb, el, IMG_INVAL, "resample: target spacing[%d] = %g", a,
                        (double)target_spacing[a]);
    }
    size_t plane = (size_t)nx * (size_t)ny, total;
    if (plane / (size_t)nx != (size_t)ny || (total = plane * (size_t)nz) / plane != (size_t)nz ||
        total > SIZE_MAX / sizeof(float))
        return util_errf(eb, el, IMG_TOOBIG, "resample: %d x %d x %d voxels overflow", nx, ny, nz);

    size_t nvin = (size_t)nin[0] * (size_t)nin[1] * (size_t)nin[2];
    float pad = INFINITY;
    for (size_t i = 0; i < nvin; i++)
        if (in->data[i] < pad)
            pad = in->data[i];
    if (!isfinite(pad))
        pad = 0;

    double r[3];
    for (int a = 0; a < 3; a++)
        r[a] = (double)target_spacing[a] / (double)in->spacing[a];
    float *data = malloc(total * sizeof *data);
    axis_map *m[3];
    m[0] = malloc((size_t)nx * sizeof(axis_map));
    m[1] = malloc((size_t)ny * sizeof(axis_map));
    m[2] = malloc((size_t)nz * sizeof(axis_map));
    if (data == NULL || m[0] == NULL || m[1] == NULL || m[2] == NULL) {
        free(data);
        free(m[0]);
        free(m[1]);
        free(m[2]);
        return util_errf(eb, el, IMG_NOMEM, "resample: out of memory for %zu voxels", total);
    }
    for (int a = 0; a < 3; a++)
        axis_plan(nin[a], nout[a], r[a], m[a]);

    const float *src = in->data;
    const size_t sx = (size_t)nin[0], sxy = (size_t)nin[0] * (size_t)nin[1];
    float *o = data;
    for (int k = 0; k < nz; k++) {
        const axis_map *mk = &m[2][k];
        for (int j = 0; j < ny; j++) {
            const axis_map *mj = &m[1][j];
            if (!mk->inside || !mj->inside) {
                for (int i = 0; i < nx; i++)
                    *o++ = pad;
                continue;
            }
            const float *p00 = src + (size_t)mk->i0 * sxy + (size_t)mj->i0 * sx;
            const float *p01 = src + (size_t)mk->i0 * sxy + (size_t)mj->i1 * sx;
            const float *p10 = src + (size_t)mk->i1 * sxy + (size_t)mj->i0 * sx;
            const float *p11 = src + (size_t)mk->i1 * sxy + (size_t)mj->i1 * sx;
            const float wj = mj->w, wk = mk->w;
            for (int i = 0; i < nx; i++) {
                const axis_map *mi = &m[0][i];
                if (!mi->inside) {
                    *o++ = pad;
                    continue;
                }
                const int a = mi->i0, b = mi->i1;
                const float wi = mi->w;
                float c00 = p00[a] + wi * (p00[b] - p00[a]);
                float c01 = p01[a] + wi * (p01[b] - p01[a]);
                float c10 = p10[a] + wi * (p10[b] - p10[a]);
                float c11 = p11[a] + wi * (p11[b] - p11[a]);
                float c0 = c00 + wj * (c01 - c00);
                float c1 = c10 + wj * (c11 - c10);
                *o++ = c0 + wk * (c1 - c0);
            }
        }
    }
    free(m[0]);
    free(m[1]);
    free(m[2]);

    img_vol v;
    memset(&v, 0, sizeof v);
    v.format = in->format;
    memcpy(v.modality, in->modality, sizeof v.modality);
    v.data = data;
    v.nx = nx;
    v.ny = ny;
    v.nz = nz;
    double c0[3];
    for (int a = 0; a < 3; a++) {
        v.spacing[a] = target_spacing[a];
        c0[a] = (nin[a] - 1) / 2.0 - (nout[a] - 1) / 2.0 * r[a];
    }
    for (int row = 0; row < 3; row++) {
        double t = in->affine[row][3];
        for (int a = 0; a < 3; a++) {
            v.affine[row][a] = in->affine[row][a] * r[a];
            t += in->affine[row][a] * c0[a];
        }
        v.affine[row][3] = t;
    }
    v.affine[3][3] = 1;
    *out = v;
    return IMG_OK;
}

/* ---- intensities ------------------------------------------------------------- */

void img_ct_window(img_vol *v, float lo, float hi)
{
    assert(v != NULL && lo < hi);
    size_t n = (size_t)v->nx * (size_t)v->ny * (size_t)v->nz;
    const float inv = 1.0f / (hi - lo);
    for (size_t i = 0; i < n; i++) {
        float x = v->data[i];
        if (!isfinite(x))
            x = lo;
        x = x < lo ? lo : x > hi ? hi : x;
        v->data[i] = (x - lo) * inv;
    }
}

static int cmp_float(const void *pa, const void *pb)
{
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a > b) - (a < b);
}

/* Quickselect (Hoare partition, median-of-three pivot): afterwards a[k] is
 * the k-th smallest, everything before it <= a[k] <= everything after.
 * Crafted inputs can defeat median-of-three, so after 2 log2(n) + 8 rounds
 * the rest is simply sorted (the introselect idea): O(n) in practice,
 * O(n log n) at worst. */
static float select_kth(float *a, size_t n, size_t k)
{
    ptrdiff_t lo = 0, hi = (ptrdiff_t)n - 1, kk = (ptrdiff_t)k;
    int budget = 8;
    for (size_t m = n; m > 1; m >>= 1)
        budget += 2;
    while (hi > lo) {
        if (budget-- == 0) {
            qsort(a + lo, (size_t)(hi - lo + 1), sizeof *a, cmp_float);
            break;
        }
        ptrdiff_t mid = lo + (hi - lo) / 2;
        float t;
#define SWAPF(x, y) (t = a[x], a[x] = a[y], a[y] = t)
        if (a[mid] < a[lo])
            SWAPF(mid, lo);
        if (a[hi] < a[lo])
            SWAPF(hi, lo);
        if (a[hi] < a[mid])
            SWAPF(hi, mid);
        float pivot = a[mid];
        ptrdiff_t i = lo, j = hi;
        while (i <= j) {
            while (a[i] < pivot)
                i++;
            while (a[j] > pivot)
                j--;
            if (i <= j) {
                SWAPF(i, j);
                i++;
                j--;
            }
        }
#undef SWAPF
        if (kk <= j)
            hi = j;
        else if (kk >= i)
            lo = i;
        else
            break; /* a[j+1 .. i-1] all equal the pivot */
    }
    return a[k];
}

/* The p-th percentile (0..100) of the m values in a, interpolating
 * linearly between order statistics; reorders a. */
static float percentile(float *a, size_t m, double p)
{
    double pos = p / 100.0 * (double)(m - 1);
    size_t k = (size_t)floor(pos);
    if (k >= m - 1)
        return select_kth(a, m, m - 1);
    double frac = pos - (double)k;
    float lo = select_kth(a, m, k);
    if (frac == 0)
        return lo;
    float hi = a[k + 1];
    for (size_t i = k + 2; i < m; i++)
        if (a[i] < hi)
            hi = a[i];
    return (float)(lo + frac * ((double)hi - lo));
}

int img_mr_scale(img_vol *v, float p_lo, float p_hi)
{
    if (v == NULL || !(p_lo >= 0 && p_lo < p_hi && p_hi <= 100))
        return IMG_INVAL;
    size_t n = (size_t)v->nx * (size_t)v->ny * (size_t)v->nz, m = 0;
    if (n == 0)
        return IMG_OK;
    float *tmp = malloc(n * sizeof *tmp);
    if (tmp == NULL)
        return IMG_NOMEM;
    for (size_t i = 0; i < n; i++)
        if (isfinite(v->data[i]))
            tmp[m++] = v->data[i];
    float lo = 0, hi = 0;
    if (m > 0) {
        lo = percentile(tmp, m, p_lo);
        hi = percentile(tmp, m, p_hi);
    }
    free(tmp);
    if (!(hi > lo)) {
        memset(v->data, 0, n * sizeof *v->data);
        return IMG_OK;
    }
    const double inv = 1.0 / ((double)hi - lo);
    for (size_t i = 0; i < n; i++) {
        float x = v->data[i];
        if (!isfinite(x)) {
            v->data[i] = 0;
            continue;
        }
        double y = ((double)x - lo) * inv;
        v->data[i] = (float)(y < 0 ? 0 : y > 1 ? 1 : y);
    }
    return IMG_OK;
}

void img_picture_order(img_vol *v)
{
    if (v == NULL || v->data == NULL || v->nz != 1 || v->format != IMG_FMT_NIFTI)
        return;
    /* Half a turn: pixel (i, j) goes to (nx-1-i, ny-1-j), which reverses
     * the whole row-major array. */
    size_t n = (size_t)v->nx * (size_t)v->ny;
    for (size_t a = 0, b = n - 1; a < b; a++, b--) {
        float t = v->data[a];
        v->data[a] = v->data[b];
        v->data[b] = t;
    }
    /* The same voxel centres: new (i, j) is old (nx-1-i, ny-1-j). */
    for (int r = 0; r < 3; r++) {
        v->affine[r][3] += v->affine[r][0] * (v->nx - 1) + v->affine[r][1] * (v->ny - 1);
        v->affine[r][0] = -v->affine[r][0];
        v->affine[r][1] = -v->affine[r][1];
    }
    v->format = IMG_FMT_PICTURE;
}

