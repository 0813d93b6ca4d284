/* imageio/dicom.c: DICOM volumes (a file or a series folder) and
 * radiographs, on the GDCM shim (dicom_gdcm.cpp) that reads one file's
 * header and pixels.  Geometry, series checks, rescale and the display
 * mapping are ours (imageio.h has the rules). */
#include "imageio/dicom_internal.h"
#include "imageio/imageio.h"
#include "imageio/internal.h"
#include "util/util.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* ---- telling DICOM apart ---------------------------------------------------- */

int img_is_dicom_mem(const void *data, size_t len)
{
    return data && len >= 132 && !memcmp((const char *)data + 128, "DICM", 4);
}

static int has_ext(const char *path, const char *ext)
{
    size_t n = strlen(path), e = strlen(ext);
    return n > e && !strcasecmp(path + n - e, ext);
}

int img_is_dicom_path(const char *path)
{
    struct stat st;
    if (!path || stat(path, &st))
        return has_ext(path ? path : "", ".dcm") || has_ext(path ? path : "", ".dicom");
    if (S_ISDIR(st.st_mode))
        return 1;
    if (has_ext(path, ".dcm") || has_ext(path, ".dicom") || has_ext(path, ".zip"))
        return 1;
    if (has_ext(path, ".nii") || has_ext(path, ".nii.gz") || has_ext(path, ".png"))
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    unsigned char b[132];
    size_t got = fread(b, 1, sizeof b, f);
    fclose(f);
    return img_is_dicom_mem(b, got);
}

/* ---- helpers ------------------------------------------------------------------ */

static size_t lim_voxels(const img_limits *lim)
{
    return lim && lim->max_voxels ? lim->max_voxels : IMG_MAX_VOXELS;
}

static void fill_meta(const img__dcm *h, int files, int frames, img_dicom_meta *m)
{
    if (!m)
        return;
    memset(m, 0, sizeof *m);
#define CP(f, g) snprintf(m->f, sizeof m->f, "%s", h->g)
    CP(study_uid, study_uid);
    CP(series_uid, series_uid);
    CP(modality, modality);
    CP(body_part, body_part);
    CP(study_date, study_date);
    CP(series_desc, series_desc);
    CP(manufacturer, manufacturer);
    CP(accession, accession);
    CP(sop_class, sop_class);
    CP(image_type, image_type);
#undef CP
    m->rows = h->rows;
    m->cols = h->cols;
    m->has_pixels = (h->present & IMG__DCM_PIXELS) != 0;
    m->has_position = (h->present & IMG__DCM_IPP) && (h->present & IMG__DCM_IOP);
    m->slice_thickness = h->present & IMG__DCM_THICK ? h->thickness : 0;
    m->files = files;
    m->frames = frames;
}

static void cross(const double a[3], const double b[3], double o[3])
{
    o[0] = a[1] * b[2] - a[2] * b[1];
    o[1] = a[2] * b[0] - a[0] * b[2];
    o[2] = a[0] * b[1] - a[1] * b[0];
}

static double dot(const double a[3], const double b[3])
{
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

/* The orientation's two unit vectors and their normal; refuses what is not
 * two orthogonal unit vectors (within 1e-3). */
static int orientation(const char *name, const img__dcm *h, double row[3], double col[3],
                       double nrm[3], char *eb, size_t el)
{
    if (!(h->present & IMG__DCM_IOP))
        return util_errf(eb, el, IMG_FORMAT, "%s: no ImageOrientationPatient: the slice has no "
                         "orientation", name);
    memcpy(row, h->iop, 3 * sizeof *row);
    memcpy(col, h->iop + 3, 3 * sizeof *col);
    double nr = sqrt(dot(row, row)), nc = sqrt(dot(col, col));
    if (fabs(nr - 1) > 1e-3 || fabs(nc - 1) > 1e-3 || fabs(dot(row, col)) > 1e-3)
        return util_errf(eb, el, IMG_FORMAT, "%s: ImageOrientationPatient %g\\%g\\%g\\%g\\%g\\%g is "
                         "not two orthogonal unit vectors", name, h->iop[0], h->iop[1], h->iop[2],
                         h->iop[3], h->iop[4], h->iop[5]);
    for (int a = 0; a < 3; a++)
        row[a] /= nr, col[a] /= nc;
    cross(row, col, nrm);
    return IMG_OK;
}

/* Stored values to physical ones. */
static void rescale(float *v, size_t n, double slope, double icpt)
{
    if (slope == 1 && icpt == 0)
        return;
    for (size_t i = 0; i < n; i++)
        v[i] = (float)(v[i] * slope + icpt);
}

/* ---- one slice of a series -------------------------------------------------- */

typedef struct slice {
    char *path;    /* the file (a series), or its name in a zip */
    const unsigned char *mem; /* a zip entry's bytes, or NULL */
    size_t mlen;
    img__dcm h;
    int frame;     /* the frame of a multi-frame file */
    double pos[3]; /* its ImagePositionPatient */
    double d;      /* the position along the normal */
} slice;

static int cmp_slice(const void *a, const void *b)
{
    const slice *x = a, *y = b;
    if (x->d != y->d)
        return x->d < y->d ? -1 : 1;
    return x->frame - y->frame;
}

static const char *base(const char *p)
{
    const char *s = strrchr(p, '/');
    return s && s[1] ? s + 1 : p;
}

/* Sorts the slices along the normal and checks the stack: one orientation,
 * positions on one line along the normal, uniform spacing.  Writes the
 * slice spacing. */
static int check_stack(const char *name, slice *s, int n, const double nrm[3], double *dz,
                       char *eb, size_t el)
{
    for (int i = 0; i < n; i++)
        s[i].d = dot(s[i].pos, nrm);
    qsort(s, (size_t)n, sizeof *s, cmp_slice);
    if (n <= 1) {
        *dz = s[0].h.present & IMG__DCM_THICK && s[0].h.thickness > 0 ? s[0].h.thickness : 1.0;
        return IMG_OK;
    }
    char wa[320], wb[320];
#define WHO_(i, buf)                                                                               \
    (s[i].path ? snprintf(buf, sizeof buf, "%s", base(s[i].path))                                  \
               : snprintf(buf, sizeof buf, "frame %d", s[i].frame + 1),                            \
     buf)
#define WHO(i) WHO_(i, wa)
#define WHO2(i) WHO_(i, wb)
    for (int i = 1; i < n; i++)
        if (s[i].d - s[i - 1].d < 1e-3)
            return util_errf(eb, el, IMG_FORMAT, "%s: two slices at one position (%.3f mm along "
                             "the normal): %s and %s", name, s[i].d, WHO(i - 1), WHO2(i));
    /* the stack must run along the normal: in-plane drift is a tilted
     * gantry or a mix of stacks */
    for (int i = 1; i < n; i++) {
        double off[3];
        for (int a = 0; a < 3; a++)
            off[a] = s[i].pos[a] - s[0].pos[a] - (s[i].d - s[0].d) * nrm[a];
        if (sqrt(dot(off, off)) > 0.01 * (s[i].d - s[0].d) + 0.01)
            return util_errf(eb, el, IMG_FORMAT, "%s: ImagePositionPatient of %s is %.2f mm "
                             "off the line along the slice normal (a tilted or mixed stack)",
                             name, WHO(i), sqrt(dot(off, off)));
    }
    double *g = malloc((size_t)(n - 1) * sizeof *g);
    if (!g)
        return util_errf(eb, el, IMG_NOMEM, "%s: out of memory", name);
    for (int i = 1; i < n; i++)
        g[i - 1] = s[i].d - s[i - 1].d;
    double mn = g[0];
    for (int i = 1; i < n - 1; i++)
        if (g[i] < mn)
            mn = g[i];
    int rc = IMG_OK;
    for (int i = 0; i < n - 1 && !rc; i++) {
        if (fabs(g[i] - mn) <= 0.01 * mn + 0.01)
            continue;
        double k = g[i] / mn;
        if (fabs(k - floor(k + 0.5)) < 0.05)
            rc = util_errf(eb, el, IMG_FORMAT, "%s: %d slice(s) missing between %s and %s "
                           "(a gap of %.3f mm in slices %.3f mm apart); not resampled",
                           name, (int)floor(k + 0.5) - 1, WHO(i), WHO2(i + 1), g[i], mn);
        else
            rc = util_errf(eb, el, IMG_FORMAT, "%s: slice spacing is not uniform (%.3f mm between "
                           "%s and %s, %.3f mm elsewhere); not resampled", name, g[i],
                           WHO(i), WHO2(i + 1), mn);
    }
#undef WHO
#undef WHO2
#undef WHO_
    free(g);
    *dz = mn;
    return rc;
}

/* ---- volumes ------------------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The files of a series folder (not its subfolders; hidden files and a
 * DICOMDIR left out), sorted by name. */
int img_dicom_series_files(const char *dir, char ***out, int *n, char *eb, size_t el)
{
    DIR *d = opendir(dir);
    if (!d)
        return util_errf(eb, el, IMG_IO, "%s: %s", dir, strerror(errno));
    char **v = NULL;
    int k = 0, cap = 0, rc = IMG_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !strcasecmp(e->d_name, "DICOMDIR"))
            continue;
        char *p;
        if (asprintf(&p, "%s/%s", dir, e->d_name) < 0) {
            rc = util_errf(eb, el, IMG_NOMEM, "%s: out of memory", dir);
            break;
        }
        struct stat st;
        if (stat(p, &st) || !S_ISREG(st.st_mode)) {
            free(p);
            continue;
        }
        if (k == cap) {
            cap = cap ? 2 * cap : 64;
            char **nv = realloc(v, (size_t)cap * sizeof *nv);
            if (!nv) {
                free(p);
                rc = util_errf(eb, el, IMG_NOMEM, "%s: out of memory", dir);
                break;
            }
            v = nv;
        }
        v[k++] = p;
    }
    closedir(d);
    if (!rc && k == 0)
        rc = util_errf(eb, el, IMG_FORMAT, "%s: the folder holds no files", dir);
    if (rc) {
        for (int i = 0; i < k; i++)
            free(v[i]);
        free(v);
        return rc;
    }
    qsort(v, (size_t)k, sizeof *v, cmp_str);
    *out = v;
    *n = k;
    return IMG_OK;
}

static void slices_free(slice *s, int n)
{
    for (int i = 0; s && i < n; i++) {
        if (s[i].frame == 0)
            img__dcm_free(&s[i].h);
        free(s[i].path);
    }
    free(s);
}

/* Slices from one file's frames (mem or path). */
static int frames_of(const char *name, img__dcm *h, slice **out, int *n, char *eb, size_t el)
{
    slice *s = calloc((size_t)h->frames, sizeof *s);
    if (!s)
        return util_errf(eb, el, IMG_NOMEM, "%s: out of memory", name);
    if (h->frames > 1 && !h->fipp) {
        free(s);
        return util_errf(eb, el, IMG_UNSUPPORTED,
                         "%s: %d frames without a per-frame ImagePositionPatient "
                         "(PerFrameFunctionalGroupsSequence): cannot be stacked into a volume",
                         name, h->frames);
    }
    for (int f = 0; f < h->frames; f++) {
        s[f].h = *h;
        s[f].frame = f;
        memcpy(s[f].pos, h->fipp ? h->fipp + 3 * f : h->ipp, sizeof s[f].pos);
    }
    *out = s;
    *n = h->frames;
    return IMG_OK;
}

static int build_volume(const char *name, const char *path, const void *mem, size_t len,
                        slice *s, int n, const img_limits *lim, img_vol *out,
                        img_dicom_meta *meta, int files, char *eb, size_t el)
{
    const img__dcm *h0 = &s[0].h;
    double row[3], col[3], nrm[3], dz = 1;
    int rc = orientation(s[0].path ? s[0].path : name, h0, row, col, nrm, eb, el);
    if (rc)
        return rc;
    if (!(h0->present & IMG__DCM_PS))
        return util_errf(eb, el, IMG_FORMAT, "%s: no PixelSpacing: the slice has no size", name);
    if (!(h0->ps[0] > 0 && h0->ps[1] > 0))
        return util_errf(eb, el, IMG_FORMAT, "%s: PixelSpacing %g\\%g is not positive", name,
                         h0->ps[0], h0->ps[1]);
    if ((rc = check_stack(name, s, n, nrm, &dz, eb, el)))
        return rc;
    int64_t dims[3] = {h0->cols, h0->rows, n};
    size_t plane = (size_t)h0->cols * (size_t)h0->rows, nvox = plane * (size_t)n;
    if (nvox > lim_voxels(lim))
        return util_errf(eb, el, IMG_TOOBIG, "%s: %d x %d x %d voxels, more than the limit of %zu",
                         name, h0->cols, h0->rows, n, lim_voxels(lim));
    if (lim && lim->admit && (rc = lim->admit(lim->admit_ctx, 2 * nvox * sizeof(float), name, eb, el)))
        return rc;
    float *vox = malloc(nvox * sizeof *vox);
    if (!vox)
        return util_errf(eb, el, IMG_NOMEM, "%s: out of memory for %zu voxels", name, nvox);
    float *px = NULL;
    if (!s[0].path) { /* one file: all frames at once */
        img__dcm h;
        rc = img__dcm_read(path, mem, len, name, &h, &px, lim_voxels(lim), eb, el);
        img__dcm_free(&h);
        if (rc) {
            free(vox);
            return rc;
        }
    }
    for (int k = 0; k < n && !rc; k++) {
        const img__dcm *h = &s[k].h;
        if (h->rows != h0->rows || h->cols != h0->cols)
            rc = util_errf(eb, el, IMG_FORMAT, "%s: %s is %d x %d, the series %d x %d", name,
                           base(s[k].path), h->cols, h->rows, h0->cols, h0->rows);
        double slope = h->present & IMG__DCM_RESCALE ? h->slope : 1, icpt = h->present & IMG__DCM_RESCALE ? h->intercept : 0;
        if (h->frescale)
            slope = h->frescale[2 * s[k].frame], icpt = h->frescale[2 * s[k].frame + 1];
        if (!rc && s[k].path) {
            img__dcm hh;
            float *one = NULL;
            rc = img__dcm_read(s[k].mem ? NULL : s[k].path, s[k].mem, s[k].mlen,
                               s[k].mem ? s[k].path : NULL, &hh, &one, plane, eb, el);
            img__dcm_free(&hh);
            if (!rc && (hh.rows != h0->rows || hh.cols != h0->cols || hh.frames != 1))
                rc = util_errf(eb, el, IMG_FORMAT, "%s: changed while it was read", s[k].path);
            if (!rc)
                memcpy(vox + (size_t)k * plane, one, plane * sizeof *vox);
            free(one);
        } else if (!rc) {
            memcpy(vox + (size_t)k * plane, px + (size_t)s[k].frame * plane, plane * sizeof *vox);
        }
        if (!rc)
            rescale(vox + (size_t)k * plane, plane, slope, icpt);
    }
    free(px);
    if (rc) {
        free(vox);
        return rc;
    }
    /* LPS: voxel (i, j, k) at P0 + i dc row + j dr col + k dz nrm, where
     * PixelSpacing is (row spacing dr, column spacing dc); RAS flips x, y. */
    double A[4][4] = {{0}};
    for (int a = 0; a < 3; a++) {
        double sg = a < 2 ? -1 : 1;
        A[a][0] = sg * row[a] * h0->ps[1];
        A[a][1] = sg * col[a] * h0->ps[0];
        A[a][2] = sg * nrm[a] * dz;
        A[a][3] = sg * s[0].pos[a];
    }
    A[3][3] = 1;
    fill_meta(h0, files, n, meta);
    rc = img__orient_affine(name, "ImageOrientationPatient", vox, dims, A, IMG_FMT_DICOM, out, eb,
                            el);
    if (!rc)
        snprintf(out->modality, sizeof out->modality, "%.15s", h0->modality);
    return rc;
}

/* The header of slice c of a series (a file or a zip entry), checked
 * against the first, s[0]. */
static int series_slice(const char *dir, slice *s, slice *c, char *eb, size_t el)
{
    int rc = c->mem ? img__dcm_read(NULL, c->mem, c->mlen, c->path, &c->h, NULL, 0, eb, el)
                    : img__dcm_read(c->path, NULL, 0, NULL, &c->h, NULL, 0, eb, el);
    if (!rc && !(c->h.present & IMG__DCM_PIXELS))
        rc = util_errf(eb, el, IMG_FORMAT, "%s: %s is not an image (SOPClassUID %s); a series "
                       "holds one image series (medsem scan sorts a mixed folder)",
                       dir, base(c->path), c->h.sop_class);
    if (!rc && c->h.frames != 1)
        rc = util_errf(eb, el, IMG_UNSUPPORTED, "%s: %s has %d frames; a series of multi-frame "
                       "files is not read (give the file itself)", dir, base(c->path),
                       c->h.frames);
    if (!rc && strcmp(c->h.series_uid, s[0].h.series_uid))
        rc = util_errf(eb, el, IMG_FORMAT, "%s: mixed series: %s is in series %s, %s in %s "
                       "(medsem scan splits a folder into series)", dir, base(s[0].path),
                       s[0].h.series_uid, base(c->path), c->h.series_uid);
    if (!rc && memcmp(c->h.iop, s[0].h.iop, sizeof c->h.iop)) {
        int same = 1;
        for (int a = 0; a < 6; a++)
            same &= fabs(c->h.iop[a] - s[0].h.iop[a]) < 1e-4;
        if (!same)
            rc = util_errf(eb, el, IMG_FORMAT, "%s: ImageOrientationPatient of %s differs "
                           "from that of %s: not one stack", dir, base(c->path), base(s[0].path));
    }
    if (!rc && !(c->h.present & IMG__DCM_IPP))
        rc = util_errf(eb, el, IMG_FORMAT, "%s: %s has no ImagePositionPatient", dir,
                       base(c->path));
    memcpy(c->pos, c->h.ipp, sizeof c->pos);
    return rc;
}

static int series_headers(const char *dir, slice **out, int *n, int *files, char *eb, size_t el)
{
    char **names = NULL;
    int k = 0, rc = img_dicom_series_files(dir, &names, &k, eb, el);
    if (rc)
        return rc;
    slice *s = calloc((size_t)k, sizeof *s);
    if (!s) {
        for (int i = 0; i < k; i++)
            free(names[i]);
        free(names);
        return util_errf(eb, el, IMG_NOMEM, "%s: out of memory", dir);
    }
    int m = 0;
    for (int i = 0; i < k; i++) {
        if (rc) {
            free(names[i]);
            continue;
        }
        slice *c = &s[m];
        c->path = names[i];
        m++;
        rc = series_slice(dir, s, c, eb, el);
    }
    free(names);
    if (rc) {
        slices_free(s, m);
        return rc;
    }
    *out = s;
    *n = m;
    *files = m;
    return IMG_OK;
}

/* A zip of one series in memory: its entries are the slices. out NULL:
 * the headers only (meta). */
#define ZIP_MAX_ENTRIES 4096
static int read_zip(const unsigned char *b, size_t n, const char *name, const img_limits *lim,
                    img_vol *out, img_dicom_meta *meta, char *eb, size_t el)
{
    /* the inflated files may hold the volume's stored samples (up to 8 bytes
     * each) plus their headers */
    size_t max_total = lim_voxels(lim) * 8 + ((size_t)64 << 20);
    util_zip_entry *e;
    int ne, rc = util_zip_read(b, n, name, max_total, ZIP_MAX_ENTRIES, &e, &ne, eb, el);
    if (rc)
        return rc == UTIL_ZIP_UNSUPPORTED ? IMG_UNSUPPORTED
               : rc == UTIL_ZIP_TOOBIG    ? IMG_TOOBIG
               : rc == UTIL_ZIP_NOMEM     ? IMG_NOMEM
                                          : IMG_FORMAT;
    size_t inflated = 0;
    for (int i = 0; i < ne; i++)
        inflated += e[i].len;
    slice *s = calloc((size_t)ne, sizeof *s);
    if (!s) {
        util_zip_free(e, ne);
        return util_errf(eb, el, IMG_NOMEM, "%s: out of memory", name);
    }
    if (out && lim && lim->admit)
        rc = lim->admit(lim->admit_ctx, inflated, name, eb, el);
    int m = 0;
    for (int i = 0; i < ne && !rc; i++) {
        slice *c = &s[m++];
        if (!(c->path = strdup(e[i].name))) {
            rc = util_errf(eb, el, IMG_NOMEM, "%s: out of memory", name);
            break;
        }
        c->mem = e[i].data;
        c->mlen = e[i].len;
        rc = series_slice(name, s, c, eb, el);
    }
    if (!rc && m == 1)
        rc = util_errf(eb, el, IMG_FORMAT, "%s: the zip holds one slice; send the file itself",
                       name);
    if (!rc && out)
        rc = build_volume(name, NULL, NULL, 0, s, m, lim, out, meta, m, eb, el);
    else if (!rc)
        fill_meta(&s[0].h, m, m, meta);
    slices_free(s, m);
    util_zip_free(e, ne);
    return rc;
}

static int read_volume(const char *path, const void *mem, size_t len, const char *name,
                       const img_limits *lim, img_vol *out, img_dicom_meta *meta, char *eb,
                       size_t el)
{
    if (mem && util_is_zip(mem, len))
        return read_zip(mem, len, name, lim, out, meta, eb, el);
    if (path && has_ext(path, ".zip")) {
        size_t n;
        unsigned char *b = (unsigned char *)util_read_file(path, &n);
        if (!b)
            return util_errf(eb, el, IMG_IO, "%s: %s", path, strerror(errno));
        int rc = read_zip(b, n, name, lim, out, meta, eb, el);
        free(b);
        return rc;
    }
    slice *s = NULL;
    int n = 0, files = 1, rc;
    struct stat st;
    if (path && !stat(path, &st) && S_ISDIR(st.st_mode)) {
        rc = series_headers(path, &s, &n, &files, eb, el);
        if (!rc)
            rc = build_volume(name, NULL, NULL, 0, s, n, lim, out, meta, files, eb, el);
        slices_free(s, n);
        return rc;
    }
    img__dcm h;
    if ((rc = img__dcm_read(path, mem, len, name, &h, NULL, 0, eb, el)))
        return rc;
    if (!(h.present & IMG__DCM_PIXELS)) {
        rc = util_errf(eb, el, IMG_FORMAT, "%s: no PixelData (SOPClassUID %s): not an image", name,
                       h.sop_class);
    } else if (!(rc = frames_of(name, &h, &s, &n, eb, el))) {
        rc = build_volume(name, path, mem, len, s, n, lim, out, meta, 1, eb, el);
        free(s);
    }
    img__dcm_free(&h);
    return rc;
}

int img_read_dicom(const char *path, const img_limits *lim, img_vol *out, img_dicom_meta *meta,
                   char *errbuf, size_t errlen)
{
    if (!path || !out)
        return util_errf(errbuf, errlen, IMG_INVAL, "img_read_dicom: NULL argument");
    return read_volume(path, NULL, 0, path, lim, out, meta, errbuf, errlen);
}

int img_read_dicom_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                       img_vol *out, img_dicom_meta *meta, char *errbuf, size_t errlen)
{
    if (!data || !out)
        return util_errf(errbuf, errlen, IMG_INVAL, "img_read_dicom_mem: NULL argument");
    return read_volume(NULL, data, len, name ? name : "(memory)", lim, out, meta, errbuf, errlen);
}

/* ---- radiographs ----------------------------------------------------------------- */

static int read_2d(const char *path, const void *mem, size_t len, const char *name,
                   const img_limits *lim, img_vol *out, img_dicom_meta *meta, char *eb, size_t el)
{
    img__dcm h;
    float *px = NULL;
    size_t maxp = lim && lim->max_pixels ? lim->max_pixels : IMG_MAX_PIXELS;
    int rc = img__dcm_read(path, mem, len, name, &h, NULL, 0, eb, el);
    if (rc)
        return rc;
    if (!(h.present & IMG__DCM_PIXELS))
        rc = util_errf(eb, el, IMG_FORMAT, "%s: no PixelData (SOPClassUID %s): not an image", name,
                       h.sop_class);
    else if (h.frames != 1)
        rc = util_errf(eb, el, IMG_INVAL, "%s: NumberOfFrames %d: a radiograph has one frame "
                       "(read a multi-frame file as a volume)", name, h.frames);
    else if ((size_t)h.rows * (size_t)h.cols > maxp)
        rc = util_errf(eb, el, IMG_TOOBIG, "%s: %d x %d pixels, more than the limit of %zu", name,
                       h.cols, h.rows, maxp);
    size_t np = (size_t)h.rows * (size_t)h.cols;
    if (!rc && lim && lim->admit)
        rc = lim->admit(lim->admit_ctx, 3 * np * sizeof(float), name, eb, el);
    img__dcm hh;
    if (!rc) {
        rc = img__dcm_read(path, mem, len, name, &hh, &px, maxp, eb, el);
        img__dcm_free(&hh);
    }
    if (rc) {
        img__dcm_free(&h);
        return rc;
    }
    double slope = h.present & IMG__DCM_RESCALE ? h.slope : 1;
    double icpt = h.present & IMG__DCM_RESCALE ? h.intercept : 0;
    rescale(px, np, slope, icpt);
    /* the window: the file's, else the stored bit range through the rescale */
    double c, w;
    int sigmoid = (h.present & IMG__DCM_VOILUT) != 0;
    if (h.present & IMG__DCM_WINDOW && h.ww >= 1) {
        c = h.wc, w = h.ww;
    } else {
        int bits = h.bits_stored > 0 && h.bits_stored <= 32 ? h.bits_stored : 16;
        if (h.samples == 3 || !strncmp(h.photometric, "RGB", 3) || !strncmp(h.photometric, "YBR", 3))
            bits = 8 < bits ? bits : 8;
        double lo = h.pixel_rep ? -ldexp(1, bits - 1) : 0;
        double hi = h.pixel_rep ? ldexp(1, bits - 1) - 1 : ldexp(1, bits) - 1;
        double a = lo * slope + icpt, b = hi * slope + icpt;
        if (a > b) {
            double t = a;
            a = b, b = t;
        }
        /* DICOM's linear window maps [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2] */
        w = b - a + 1;
        c = a + 0.5 + (w - 1) / 2;
        sigmoid = 0;
    }
    int invert = !strcmp(h.photometric, "MONOCHROME1");
    for (size_t i = 0; i < np; i++) {
        double x = px[i], y;
        if (sigmoid) {
            y = 1.0 / (1.0 + exp(-4.0 * (x - c) / w));
        } else if (w <= 1) {
            y = x > c - 0.5 ? 1 : 0;
        } else {
            y = (x - (c - 0.5)) / (w - 1) + 0.5;
            y = y < 0 ? 0 : y > 1 ? 1 : y;
        }
        px[i] = (float)(invert ? 1 - y : y);
    }
    img_vol v;
    memset(&v, 0, sizeof v);
    v.data = px;
    v.nx = h.cols;
    v.ny = h.rows;
    v.nz = 1;
    v.format = IMG_FMT_DISPLAY;
    snprintf(v.modality, sizeof v.modality, "%.15s", h.modality);
    double sx = 1, sy = 1;
    if (h.present & IMG__DCM_PS && h.ps[0] > 0 && h.ps[1] > 0)
        sy = h.ps[0], sx = h.ps[1];
    else if (h.present & IMG__DCM_IPS && h.ips[0] > 0 && h.ips[1] > 0)
        sy = h.ips[0], sx = h.ips[1];
    v.spacing[0] = (float)sx;
    v.spacing[1] = (float)sy;
    v.spacing[2] = 1;
    v.affine[0][0] = sx;
    v.affine[1][1] = sy;
    v.affine[2][2] = 1;
    v.affine[3][3] = 1;
    fill_meta(&h, 1, 1, meta);
    img__dcm_free(&h);
    *out = v;
    return IMG_OK;
}

int img_read_dicom_2d(const char *path, const img_limits *lim, img_vol *out,
                      img_dicom_meta *meta, char *errbuf, size_t errlen)
{
    if (!path || !out)
        return util_errf(errbuf, errlen, IMG_INVAL, "img_read_dicom_2d: NULL argument");
    struct stat st;
    if (!stat(path, &st) && S_ISDIR(st.st_mode))
        return util_errf(errbuf, errlen, IMG_INVAL, "%s: a folder is a series; a radiograph is "
                         "one file", path);
    return read_2d(path, NULL, 0, path, lim, out, meta, errbuf, errlen);
}

int img_read_dicom_2d_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                          img_vol *out, img_dicom_meta *meta, char *errbuf, size_t errlen)
{
    if (!data || !out)
        return util_errf(errbuf, errlen, IMG_INVAL, "img_read_dicom_2d_mem: NULL argument");
    return read_2d(NULL, data, len, name ? name : "(memory)", lim, out, meta, errbuf, errlen);
}

int img_read_dicom_meta(const char *path, img_dicom_meta *meta, char *errbuf, size_t errlen)
{
    if (!path || !meta)
        return util_errf(errbuf, errlen, IMG_INVAL, "img_read_dicom_meta: NULL argument");
    if (has_ext(path, ".zip"))
        return read_volume(path, NULL, 0, path, NULL, NULL, meta, errbuf, errlen);
    struct stat st;
    /* a series folder: the attributes are the series', so its first file's
     * header gives them; the whole series is checked when it is read */
    char **names = NULL;
    int files = 1, dir = !stat(path, &st) && S_ISDIR(st.st_mode);
    if (dir) {
        int rc = img_dicom_series_files(path, &names, &files, errbuf, errlen);
        if (rc)
            return rc;
    }
    img__dcm h;
    const char *first = dir ? names[0] : path;
    int rc = img__dcm_read(first, NULL, 0, first, &h, NULL, 0, errbuf, errlen);
    if (!rc) {
        fill_meta(&h, files, dir ? files : h.frames, meta);
        img__dcm_free(&h);
    }
    for (int i = 0; i < (dir ? files : 0); i++)
        free(names[i]);
    free(names);
    return rc;
}

/* ---- by content ---------------------------------------------------------------- */

int img_read_volume(const char *path, const img_limits *lim, img_vol *out, char *errbuf,
                    size_t errlen)
{
    if (path && img_is_dicom_path(path))
        return img_read_dicom(path, lim, out, NULL, errbuf, errlen);
    return img_read_nifti(path, lim, out, errbuf, errlen);
}

int img_read_volume_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                        img_vol *out, char *errbuf, size_t errlen)
{
    if (img_is_dicom_mem(data, len) || util_is_zip(data, len))
        return img_read_dicom_mem(data, len, name, lim, out, NULL, errbuf, errlen);
    return img_read_nifti_mem(data, len, name, lim, out, errbuf, errlen);
}
