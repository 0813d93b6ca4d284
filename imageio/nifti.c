/* nifti.c - NIfTI-1/2 input and reorientation to RAS (imageio.h; PNG
 * input is in png.c, resampling and intensity mappings in volume.c).
 *
 * A file or a buffer is read front to back once, through one byte stream
 * (plain or gzip, told by the gzip magic, never the name): the header,
 * which we check field by field before allocating anything (libnifti gives
 * the header layouts and swap_nifti_header), then the first volume's
 * bytes.  libnifti's own readers do not fit: its brick and collapsed-image
 * readers print to stderr even at debug level 0, nifti_image_load reads
 * every volume of a 4D file, and none reads from memory.
 */
#include "imageio/imageio.h"
#include "imageio/internal.h"
#include "util/util.h"

#include <assert.h>
#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <nifti2_io.h>
#include <zlib.h>



/* Case-insensitive "s ends with suf". */
static int ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcasecmp(s + n - m, suf) == 0;
}

static uint32_t bswap32(uint32_t x)
{
    return (x >> 24) | ((x >> 8) & 0xff00u) | ((x << 8) & 0xff0000u) | (x << 24);
}

/* ---- the NIfTI header, version-neutral ------------------------------------ */

typedef struct nii_hdr {
    int version; /* 1 or 2 */
    int datatype;
    int64_t dim[8];
    double pixdim[8];
    double vox_offset; /* float in NIfTI-1: checked to be integral */
    double scl_slope, scl_inter;
    int qform_code, sform_code;
    double quatern[3], qoffset[3];
    double srow[3][4];
} nii_hdr;

/* Copies what we use out of libnifti's header (in host byte order),
 * and its magic into magic[0 .. magiclen). */
static void nii_from_raw(const void *raw, int nver, nii_hdr *h, char *magic, size_t magiclen)
{
    memset(h, 0, sizeof *h);
    if (nver == 1) {
        const nifti_1_header *r = raw;
        memcpy(magic, r->magic, magiclen < 4 ? magiclen : 4);
        h->version = 1;
        h->datatype = r->datatype;
        for (int i = 0; i < 8; i++) {
            h->dim[i] = r->dim[i];
            h->pixdim[i] = r->pixdim[i];
        }
        h->vox_offset = r->vox_offset;
        h->scl_slope = r->scl_slope;
        h->scl_inter = r->scl_inter;
        h->qform_code = r->qform_code;
        h->sform_code = r->sform_code;
        h->quatern[0] = r->quatern_b;
        h->quatern[1] = r->quatern_c;
        h->quatern[2] = r->quatern_d;
        h->qoffset[0] = r->qoffset_x;
        h->qoffset[1] = r->qoffset_y;
        h->qoffset[2] = r->qoffset_z;
        for (int c = 0; c < 4; c++) {
            h->srow[0][c] = r->srow_x[c];
            h->srow[1][c] = r->srow_y[c];
            h->srow[2][c] = r->srow_z[c];
        }
    } else {
        const nifti_2_header *r = raw;
        memcpy(magic, r->magic, magiclen < 8 ? magiclen : 8);
        h->version = 2;
        h->datatype = r->datatype;
        for (int i = 0; i < 8; i++) {
            h->dim[i] = r->dim[i];
            h->pixdim[i] = r->pixdim[i];
        }
        h->vox_offset = (double)r->vox_offset;
        h->scl_slope = r->scl_slope;
        h->scl_inter = r->scl_inter;
        h->qform_code = r->qform_code;
        h->sform_code = r->sform_code;
        h->quatern[0] = r->quatern_b;
        h->quatern[1] = r->quatern_c;
        h->quatern[2] = r->quatern_d;
        h->qoffset[0] = r->qoffset_x;
        h->qoffset[1] = r->qoffset_y;
        h->qoffset[2] = r->qoffset_z;
        for (int c = 0; c < 4; c++) {
            h->srow[0][c] = r->srow_x[c];
            h->srow[1][c] = r->srow_y[c];
            h->srow[2][c] = r->srow_z[c];
        }
    }
}

/* Bytes per voxel of the datatypes we read, 0 for the others. */
static int nii_type_size(int dt)
{
    switch (dt) {
    case DT_UINT8:
    case DT_INT8:
        return 1;
    case DT_INT16:
    case DT_UINT16:
        return 2;
    case DT_INT32:
    case DT_UINT32:
    case DT_FLOAT32:
        return 4;
    case DT_INT64:
    case DT_UINT64:
    case DT_FLOAT64:
        return 8;
    default:
        return 0;
    }
}

static const char *nii_type_name(int dt)
{
    switch (dt) {
    case DT_BINARY: return "BINARY";
    case DT_UINT8: return "UINT8";
    case DT_INT16: return "INT16";
    case DT_INT32: return "INT32";
    case DT_FLOAT32: return "FLOAT32";
    case DT_COMPLEX64: return "COMPLEX64";
    case DT_FLOAT64: return "FLOAT64";
    case DT_RGB24: return "RGB24";
    case DT_INT8: return "INT8";
    case DT_UINT16: return "UINT16";
    case DT_UINT32: return "UINT32";
    case DT_INT64: return "INT64";
    case DT_UINT64: return "UINT64";
    case DT_FLOAT128: return "FLOAT128";
    case DT_COMPLEX128: return "COMPLEX128";
    case DT_COMPLEX256: return "COMPLEX256";
    case DT_RGBA32: return "RGBA32";
    default: return "unknown";
    }
}

/* ---- geometry -------------------------------------------------------------- */

static const char *const AXIS_NAME[3] = {"x (R-L)", "y (A-P)", "z (S-I)"};
static const char *const SROW_NAME[3] = {"srow_x", "srow_y", "srow_z"};

/* The voxel-to-world affine the header asks for (sform, else qform, else
 * pixdim), with every number it uses checked.  `used[a]` says whether
 * voxel axis a exists in the file (axis k does not in a 2D file): an
 * unused axis may have a degenerate column, which is replaced by a unit
 * vector so that the matrix stays invertible.  *src names the method for
 * messages. */
static int nii_affine(const char *path, const nii_hdr *h, const int used[3], double A[4][4],
                      const char **src, char *eb, size_t el)
{
    memset(A, 0, sizeof(double[4][4]));
    A[3][3] = 1;
    if (h->sform_code > 0) {
        *src = "sform";
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 4; c++) {
                if (!isfinite(h->srow[r][c]))
                    return util_errf(eb, el, IMG_FORMAT, "%s: sform_code = %d but %s[%d] = %g", path,
                                h->sform_code, SROW_NAME[r], c, h->srow[r][c]);
                A[r][c] = h->srow[r][c];
            }
    } else {
        double d[3];
        *src = h->qform_code > 0 ? "qform" : "pixdim";
        for (int a = 0; a < 3; a++) {
            d[a] = h->pixdim[a + 1];
            if (!(isfinite(d[a]) && d[a] > 0)) {
                if (used[a]) {
                    if (h->qform_code > 0)
                        return util_errf(eb, el, IMG_FORMAT, "%s: qform_code = %d but pixdim[%d] = %g",
                                    path, h->qform_code, a + 1, d[a]);
                    return util_errf(eb, el, IMG_FORMAT,
                                "%s: sform and qform are both unset and pixdim[%d] = %g", path,
                                a + 1, d[a]);
                }
                d[a] = 1;
            }
        }
        if (h->qform_code > 0) {
            static const char *const qn[3] = {"quatern_b", "quatern_c", "quatern_d"};
            static const char *const on[3] = {"qoffset_x", "qoffset_y", "qoffset_z"};
            for (int i = 0; i < 3; i++) {
                if (!isfinite(h->quatern[i]))
                    return util_errf(eb, el, IMG_FORMAT, "%s: qform_code = %d but %s = %g", path,
                                h->qform_code, qn[i], h->quatern[i]);
                if (!isfinite(h->qoffset[i]))
                    return util_errf(eb, el, IMG_FORMAT, "%s: qform_code = %d but %s = %g", path,
                                h->qform_code, on[i], h->qoffset[i]);
            }
            double b = h->quatern[0], c = h->quatern[1], q = h->quatern[2];
            double s = b * b + c * c + q * q, a;
            /* The file stores (b, c, d) of a unit quaternion and implies
             * a = sqrt(1 - b^2 - c^2 - d^2).  Float rounding can push the
             * sum a little over 1 (a = 0, a 180-degree rotation): renormalise
             * that, refuse anything clearly outside the unit ball. */
            if (s > 1.0 + 1e-3)
                return util_errf(eb, el, IMG_FORMAT,
                            "%s: qform quaternion (quatern_b, quatern_c, quatern_d) = "
                            "(%g, %g, %g) has norm > 1",
                            path, b, c, q);
            if (1.0 - s < 1e-7) {
                double k = 1.0 / sqrt(s);
                b *= k, c *= k, q *= k, a = 0;
            } else {
                a = sqrt(1.0 - s);
            }
            double R[3][3] = {
                {a * a + b * b - c * c - q * q, 2 * (b * c - a * q), 2 * (b * q + a * c)},
                {2 * (b * c + a * q), a * a + c * c - b * b - q * q, 2 * (c * q - a * b)},
                {2 * (b * q - a * c), 2 * (c * q + a * b), a * a + q * q - b * b - c * c},
            };
            /* qfac is pixdim[0]: -1 flips k; the standard says to read any
             * other value (0 included) as +1. */
            double qfac = h->pixdim[0] < 0 ? -1.0 : 1.0;
            for (int r = 0; r < 3; r++) {
                A[r][0] = R[r][0] * d[0];
                A[r][1] = R[r][1] * d[1];
                A[r][2] = R[r][2] * d[2] * qfac;
                A[r][3] = h->qoffset[r];
            }
        } else {
            for (int a = 0; a < 3; a++)
                A[a][a] = d[a];
        }
    }
    for (int c = 0; c < 3; c++) {
        double n2 = A[0][c] * A[0][c] + A[1][c] * A[1][c] + A[2][c] * A[2][c];
        if (n2 > 0 && isfinite(n2))
            continue;
        if (used[c])
            return util_errf(eb, el, IMG_FORMAT,
                        "%s: %s maps voxel axis %c to length %g (column %d of the affine)", path,
                        *src, "ijk"[c], sqrt(n2), c);
        /* 2D file: k is a formality; take the unit normal of the i-j
         * plane, i x j.  (Only k can be unused: dim[0] >= 2.) */
        assert(c == 2);
        double u[3] = {A[0][0], A[1][0], A[2][0]}, w[3] = {A[0][1], A[1][1], A[2][1]};
        double nrm[3] = {u[1] * w[2] - u[2] * w[1], u[2] * w[0] - u[0] * w[2],
                         u[0] * w[1] - u[1] * w[0]};
        double nn = sqrt(nrm[0] * nrm[0] + nrm[1] * nrm[1] + nrm[2] * nrm[2]);
        if (!(nn > 0))
            return util_errf(eb, el, IMG_FORMAT,
                        "%s: %s is degenerate (voxel axes i and j are parallel)", path, *src);
        for (int r = 0; r < 3; r++)
            A[r][2] = nrm[r] / nn;
    }
    return IMG_OK;
}

/* How to turn the file's voxel order into RAS order: output axis a (x, y,
 * z) takes input voxel axis perm[a], reversed when flip[a].  Each column
 * of the affine goes to the world axis it points at most; a header whose
 * columns do not make a permutation that way is inconsistent. */
static int nii_orient(const char *path, const char *src, double A[4][4], int perm[3],
                      int flip[3], char *eb, size_t el)
{
    int owner[3] = {-1, -1, -1};
    for (int c = 0; c < 3; c++) {
        int best = 0;
        for (int r = 1; r < 3; r++)
            if (fabs(A[r][c]) > fabs(A[best][c]))
                best = r;
        if (owner[best] >= 0)
            return util_errf(eb, el, IMG_FORMAT,
                        "%s: %s voxel axes %c and %c both point mostly along %s: inconsistent "
                        "orientation",
                        path, src, "ijk"[owner[best]], "ijk"[c], AXIS_NAME[best]);
        owner[best] = c;
    }
    /* Dominant entries on distinct rows do not make a matrix invertible
     * on their own (think of columns (1, .9, .9), (.9, 1, .9), ...). */
    double N[3][3];
    for (int c = 0; c < 3; c++) {
        double n = sqrt(A[0][c] * A[0][c] + A[1][c] * A[1][c] + A[2][c] * A[2][c]);
        for (int r = 0; r < 3; r++)
            N[r][c] = A[r][c] / n;
    }
    double det = N[0][0] * (N[1][1] * N[2][2] - N[1][2] * N[2][1]) -
                 N[0][1] * (N[1][0] * N[2][2] - N[1][2] * N[2][0]) +
                 N[0][2] * (N[1][0] * N[2][1] - N[1][1] * N[2][0]);
    if (!(fabs(det) > 1e-6))
        return util_errf(eb, el, IMG_FORMAT, "%s: %s is singular (determinant %g)", path, src, det);
    for (int a = 0; a < 3; a++) {
        perm[a] = owner[a];
        flip[a] = A[a][owner[a]] < 0;
    }
    return IMG_OK;
}

/* Voxels f (n[0] x n[1] x n[2], i fastest; owned, freed on failure) with
 * the voxel-to-RAS affine A, turned to RAS order by perm and flip
 * (nii_orient's). */
static int to_ras(const char *path, float *f, const int64_t n[3], double A[4][4], const int perm[3],
                const int flip[3], img_format fmt, img_vol *out, char *eb, size_t el)
{
    size_t nvox = (size_t)n[0] * (size_t)n[1] * (size_t)n[2];
    int64_t nout[3], stride_in[3] = {1, n[0], n[0] * n[1]}, step[3], base = 0;
    int identity = 1;
    for (int a = 0; a < 3; a++) {
        int c = perm[a];
        nout[a] = n[c];
        step[a] = flip[a] ? -stride_in[c] : stride_in[c];
        if (flip[a])
            base += (n[c] - 1) * stride_in[c];
        identity &= c == a && !flip[a];
    }
    float *data = f;
    if (!identity) {
        data = malloc(nvox * sizeof *data);
        if (data == NULL) {
            free(f);
            return util_errf(eb, el, IMG_NOMEM, "%s: out of memory for %zu voxels", path, nvox);
        }
        size_t o = 0;
        for (int64_t k = 0; k < nout[2]; k++)
            for (int64_t j = 0; j < nout[1]; j++) {
                int64_t idx = base + k * step[2] + j * step[1];
                for (int64_t i = 0; i < nout[0]; i++, idx += step[0])
                    data[o++] = f[idx];
            }
        free(f);
    }

    img_vol v;
    memset(&v, 0, sizeof v);
    v.format = fmt;
    v.data = data;
    v.nx = (int)nout[0];
    v.ny = (int)nout[1];
    v.nz = (int)nout[2];
    v.affine[3][3] = 1;
    for (int r = 0; r < 3; r++) {
        double t = A[r][3];
        for (int a = 0; a < 3; a++) {
            int c = perm[a];
            v.affine[r][a] = flip[a] ? -A[r][c] : A[r][c];
            if (flip[a])
                t += A[r][c] * (double)(n[c] - 1);
        }
        v.affine[r][3] = t;
    }
    for (int a = 0; a < 3; a++)
        v.spacing[a] = (float)sqrt(v.affine[0][a] * v.affine[0][a] +
                                   v.affine[1][a] * v.affine[1][a] +
                                   v.affine[2][a] * v.affine[2][a]);
    *out = v;
    return IMG_OK;
}

int img__orient_affine(const char *path, const char *src, float *f, const int64_t n[3],
                       double A[4][4], img_format fmt, img_vol *out, char *eb, size_t el)
{
    int perm[3], flip[3];
    int rc = nii_orient(path, src, A, perm, flip, eb, el);
    if (rc) {
        free(f);
        return rc;
    }
    return to_ras(path, f, n, A, perm, flip, fmt, out, eb, el);
}

/* ---- reading ----------------------------------------------------------------- */

static pthread_once_t nifti_quiet_once = PTHREAD_ONCE_INIT;

static void nifti_quiet(void)
{
    nifti_set_debug_level(0);
}

/* a * b into *r unless it overflows int64 (a, b >= 0). */
static int mul_ok(int64_t a, int64_t b, int64_t *r)
{
    if (a != 0 && b > INT64_MAX / a)
        return 0;
    *r = a * b;
    return 1;
}

/* Converts n stored values to float with the NIfTI scaling and returns how
 * many came out non-finite (those are refused by the caller). */
static size_t nii_to_float(const void *src, int dt, size_t n, int scale, double slope,
                           double inter, float *dst)
{
    size_t bad = 0;
#define NII_CONV(T)                                                          \
    do {                                                                     \
        const T *s = src;                                                    \
        for (size_t i = 0; i < n; i++) {                                     \
            double x = (double)s[i];                                         \
            if (scale)                                                       \
                x = x * slope + inter;                                       \
            if (fabs(x) <= FLT_MAX) { /* false for NaN and overflow too */   \
                dst[i] = (float)x;                                           \
            } else {                                                         \
                dst[i] = 0;                                                  \
                bad++;                                                       \
            }                                                                \
        }                                                                    \
    } while (0)
    switch (dt) {
    case DT_UINT8: NII_CONV(uint8_t); break;
    case DT_INT8: NII_CONV(int8_t); break;
    case DT_INT16: NII_CONV(int16_t); break;
    case DT_UINT16: NII_CONV(uint16_t); break;
    case DT_INT32: NII_CONV(int32_t); break;
    case DT_UINT32: NII_CONV(uint32_t); break;
    case DT_INT64: NII_CONV(int64_t); break;
    case DT_UINT64: NII_CONV(uint64_t); break;
    case DT_FLOAT32: NII_CONV(float); break;
    case DT_FLOAT64: NII_CONV(double); break;
    default: assert(!"datatype checked before"); break;
    }
#undef NII_CONV
    return bad;
}

static void bswap_n(void *buf, size_t n, int size)
{
    unsigned char *p = buf;
    for (size_t i = 0; i < n; i++, p += size)
        for (int a = 0, b = size - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

/* ---- the byte stream: a file or a buffer, plain or gzip ---------------------- */

/* One NIfTI file's bytes, read front to back once.  A file goes through
 * zlib's gz reader, which reads gzip and plain files alike; a buffer is
 * taken as is or, when it starts with the gzip magic (1f 8b), inflated
 * member after member as gzread would (bytes after the last member that
 * are not another member are ignored, as gzread ignores them).  Either way
 * the gzip magic decides, never the name. */
typedef struct nii_in {
    const char *name;         /* for messages */
    gzFile gz;                /* a file, or NULL */
    const unsigned char *mem; /* a buffer */
    size_t len, at;           /* its length; the next byte not yet fed or taken */
    int zmem, zinit, zend;    /* gzip buffer; inflate ready; its last member done */
    z_stream zs;
    const char *err;          /* the stream's failure, NULL while none */
    uint64_t pos;             /* decompressed bytes taken so far */
} nii_in;

/* zlib's last error for gz, without the "path: " it puts in front, or
 * NULL when there is none (a plain end of file). */
static const char *gz_msg(gzFile gz, const char *path)
{
    int zerr = Z_OK;
    const char *m = gzerror(gz, &zerr);
    if (zerr == Z_OK || m == NULL)
        return NULL;
    size_t n = strlen(path);
    if (strncmp(m, path, n) == 0 && strncmp(m + n, ": ", 2) == 0)
        m += n + 2;
    return m;
}

static void in_close(nii_in *in)
{
    if (in->gz)
        gzclose(in->gz);
    if (in->zinit)
        inflateEnd(&in->zs);
    memset(in, 0, sizeof *in);
}

/* Inflates up to n bytes of a gzip buffer into buf. */
static size_t in_inflate(nii_in *in, unsigned char *buf, size_t n)
{
    z_stream *z = &in->zs;
    size_t done = 0;
    while (done < n && !in->zend && !in->err) {
        if (z->avail_in == 0 && in->at < in->len) {
            size_t c = in->len - in->at < (1u << 30) ? in->len - in->at : (1u << 30);
            z->next_in = (unsigned char *)(uintptr_t)(in->mem + in->at);
            z->avail_in = (uInt)c;
            in->at += c;
        }
        size_t want = n - done < (1u << 30) ? n - done : (1u << 30);
        z->next_out = buf + done;
        z->avail_out = (uInt)want;
        int r = inflate(z, Z_NO_FLUSH);
        done += want - z->avail_out;
        if (r == Z_STREAM_END) {
            /* The unread input is contiguous from next_in to the end. */
            size_t left = z->avail_in + (in->len - in->at);
            if (left >= 2 && z->next_in[0] == 0x1f && z->next_in[1] == 0x8b)
                inflateReset(z);
            else
                in->zend = 1;
        } else if (r == Z_BUF_ERROR) {
            in->err = "unexpected end of file"; /* no input left mid-member */
        } else if (r != Z_OK) {
            in->err = z->msg ? z->msg : "inflate failed";
        }
    }
    return done;
}

/* Up to n bytes into buf; fewer at the end of the data or on a failure
 * (then in->err says what). */
static size_t in_read(nii_in *in, void *buf, size_t n)
{
    size_t done = 0;
    if (in->gz) {
        /* Chunks keep each call inside gzread's int-sized return. */
        while (done < n) {
            unsigned chunk = n - done > (1u << 26) ? 1u << 26 : (unsigned)(n - done);
            int got = gzread(in->gz, (char *)buf + done, chunk);
            if (got > 0)
                done += (size_t)got;
            if (got != (int)chunk) {
                in->err = gz_msg(in->gz, in->name);
                if (got < 0 && !in->err)
                    in->err = "read error";
                break;
            }
        }
    } else if (in->zmem) {
        done = in_inflate(in, buf, n);
    } else {
        done = in->len - in->at < n ? in->len - in->at : n;
        memcpy(buf, in->mem + in->at, done);
        in->at += done;
    }
    in->pos += done;
    return done;
}

/* Skips forward to decompressed offset off (>= in->pos); 0 on success. */
static int in_skip_to(nii_in *in, uint64_t off)
{
    if (in->gz) {
        if (off > (uint64_t)INT64_MAX ||
            gzseek(in->gz, (z_off_t)off, SEEK_SET) != (z_off_t)off) {
            in->err = gz_msg(in->gz, in->name);
            return -1;
        }
        in->pos = off;
        return 0;
    }
    unsigned char sink[4096];
    while (in->pos < off) {
        size_t n = off - in->pos < sizeof sink ? (size_t)(off - in->pos) : sizeof sink;
        if (in_read(in, sink, n) != n)
            return -1;
    }
    return 0;
}

/* Reads to the end of the data, so that a gzip stream cut after what was
 * needed, or with a bad CRC, is caught too; 0 when it ends cleanly. */
static int in_drain(nii_in *in)
{
    unsigned char sink[4096];
    while (in_read(in, sink, sizeof sink) == sizeof sink)
        ;
    return in->err ? -1 : 0;
}

/* Everything checkable in the header before reading voxels: dims, the
 * size limit, datatype, vox_offset, then the file's length.  n gets the
 * spatial size (nz = 1 for a 2D file). */
static int nii_check(const char *path, const nii_hdr *h, const img_limits *lim,
                     int64_t plain_size, int64_t n[3], int64_t *total_out, char *eb, size_t el)
{
    int64_t nd = h->dim[0];
    if (nd < 2 || nd > 7)
        return util_errf(eb, el, IMG_FORMAT, "%s: dim[0] = %lld (must be 2..7)", path, (long long)nd);
    for (int i = 1; i <= nd; i++)
        if (h->dim[i] < 1)
            return util_errf(eb, el, IMG_FORMAT, "%s: dim[%d] = %lld", path, i, (long long)h->dim[i]);
    n[0] = h->dim[1];
    n[1] = h->dim[2];
    n[2] = nd >= 3 ? h->dim[3] : 1;

    size_t maxv = lim && lim->max_voxels ? lim->max_voxels : IMG_MAX_VOXELS;
    int64_t nvox = 0, tmp;
    int big = !mul_ok(n[0], n[1], &tmp) || !mul_ok(tmp, n[2], &nvox) ||
              (uint64_t)nvox > (uint64_t)maxv || n[0] > INT_MAX || n[1] > INT_MAX ||
              n[2] > INT_MAX;
    if (big)
        return util_errf(eb, el, IMG_TOOBIG,
                    "%s: dims %lld x %lld x %lld = %.0f voxels exceed the limit of %zu", path,
                    (long long)n[0], (long long)n[1], (long long)n[2],
                    (double)n[0] * (double)n[1] * (double)n[2], maxv);

    int size = nii_type_size(h->datatype);
    if (size == 0)
        return util_errf(eb, el, IMG_UNSUPPORTED, "%s: datatype = %d (%s) is not supported", path,
                    h->datatype, nii_type_name(h->datatype));

    int64_t minoff = h->version == 1 ? 352 : 544;
    if (!(h->vox_offset >= (double)minoff && h->vox_offset <= 9.0e18 &&
          h->vox_offset == floor(h->vox_offset)))
        return util_errf(eb, el, IMG_FORMAT, "%s: vox_offset = %g (must be a whole number >= %lld)",
                    path, h->vox_offset, (long long)minoff);
    int64_t off = (int64_t)h->vox_offset;

    /* Every volume the header declares must be in the file, even though
     * only the first is read.  A compressed length says nothing about the
     * data length (plain_size < 0); there the read itself finds a short
     * file. */
    int64_t total = 1, bytes;
    for (int i = 1; i <= nd; i++)
        if (!mul_ok(total, h->dim[i], &total))
            return util_errf(eb, el, IMG_TOOBIG, "%s: dim[1..%lld] multiply past 2^63 voxels", path,
                        (long long)nd);
    if (!mul_ok(total, size, &bytes) || bytes > INT64_MAX - off)
        return util_errf(eb, el, IMG_TOOBIG, "%s: %lld voxels of %d bytes do not fit in a file", path,
                    (long long)total, size);
    if (plain_size >= 0 && plain_size < off + bytes)
        return util_errf(eb, el, IMG_FORMAT,
                    "%s: file holds %lld bytes, the header needs %lld (vox_offset %lld + %lld "
                    "voxels x %d bytes): truncated file",
                    path, (long long)plain_size, (long long)(off + bytes), (long long)off,
                    (long long)total, size);
    *total_out = total;
    return IMG_OK;
}

/* The header, checked field by field, and the first volume, from a stream
 * opened on a file or a buffer; size is the file's or buffer's length. */
static int nii_read(nii_in *in, int64_t size_bytes, const img_limits *lim, img_vol *out,
                    char *eb, size_t el)
{
    const char *path = in->name;
    pthread_once(&nifti_quiet_once, nifti_quiet);

    /* 1. The header.  sizeof_hdr (348 or 540, either byte order) tells the
     * version and the byte order; the rest of the header follows it and is
     * swapped with libnifti's swap_nifti_header when needed. */
    union {
        nifti_1_header h1;
        nifti_2_header h2;
        uint32_t sz;
    } raw;
    memset(&raw, 0, sizeof raw);
    int nver = 0, swapped = 0;
    if (in_read(in, &raw.sz, sizeof raw.sz) == sizeof raw.sz) {
        uint32_t sz = raw.sz;
        nver = sz == 348 || bswap32(sz) == 348 ? 1 : sz == 540 || bswap32(sz) == 540 ? 2 : 0;
        swapped = nver && sz != (nver == 1 ? 348u : 540u);
    }
    size_t hsize = nver == 1 ? 348 : 540;
    if (nver == 0 || in_read(in, (char *)&raw + 4, hsize - 4) != hsize - 4) {
        if (in->err)
            return util_errf(eb, el, IMG_FORMAT,
                             "%s: no NIfTI-1 or NIfTI-2 header (corrupt compressed stream: %s)",
                             path, in->err);
        return util_errf(eb, el, IMG_FORMAT,
                         "%s: no NIfTI-1 or NIfTI-2 header (bad sizeof_hdr or magic, or the file "
                         "is too short)",
                         path);
    }
    if (swapped)
        swap_nifti_header(&raw, nver);
    /* A file, plain or gzip: zlib knows which once it has read. */
    int plain = in->gz ? gzdirect(in->gz) : !in->zmem;
    nii_hdr h;
    char magic[9] = {0};
    nii_from_raw(&raw, nver, &h, magic, sizeof magic - 1);
    if (memcmp(magic, nver == 1 ? "ni1" : "ni2", 4) == 0)
        return util_errf(eb, el, IMG_UNSUPPORTED,
                    "%s: magic \"%s\" means a .hdr/.img pair; only single-file NIfTI is read",
                    path, magic);
    if (memcmp(magic, nver == 1 ? "n+1" : "n+2", 4) != 0)
        return util_errf(eb, el, IMG_FORMAT, "%s: magic is not \"%s\" (not a NIfTI-%d file)", path,
                    nver == 1 ? "n+1" : "n+2", nver);

    int64_t n[3], total = 0;
    int rc = nii_check(path, &h, lim, plain ? size_bytes : -1, n, &total, eb, el);
    if (rc != IMG_OK)
        return rc;
    int size = nii_type_size(h.datatype);
    int used[3] = {1, 1, h.dim[0] >= 3};
    double A[4][4];
    const char *src;
    int perm[3], flip[3];
    if ((rc = nii_affine(path, &h, used, A, &src, eb, el)) != IMG_OK ||
        (rc = nii_orient(path, src, A, perm, flip, eb, el)) != IMG_OK)
        return rc;

    /* Scaling: slope 0 or not finite means none (NIfTI-1 standard); a
     * valid slope with a broken intercept is a broken header. */
    int scale = h.scl_slope != 0 && isfinite(h.scl_slope);
    if (scale && !isfinite(h.scl_inter))
        return util_errf(eb, el, IMG_FORMAT, "%s: scl_slope = %g but scl_inter = %g", path,
                    h.scl_slope, h.scl_inter);

    /* 2. The first volume.  The float copy is made only once the bytes are
     * all there: a .nii.gz that lies about its size costs no more than
     * what it actually holds.  A gzip stream that holds just this volume
     * is read to its end, CRC included. */
    size_t nvox = (size_t)n[0] * (size_t)n[1] * (size_t)n[2], bytes = nvox * (size_t)size;
    if (lim && lim->admit &&
        (rc = lim->admit(lim->admit_ctx, bytes + nvox * sizeof(float), path, eb, el)) != IMG_OK)
        return rc;
    void *buf = malloc(bytes);
    if (buf == NULL)
        return util_errf(eb, el, IMG_NOMEM, "%s: out of memory for %zu voxels", path, nvox);
    size_t got = 0;
    if (in_skip_to(in, (uint64_t)h.vox_offset))
        rc = util_errf(eb, el, IMG_FORMAT, "%s: cannot reach vox_offset %lld (%s)", path,
                       (long long)h.vox_offset, in->err ? in->err : "file too short");
    else if ((got = in_read(in, buf, bytes)) != bytes)
        rc = util_errf(eb, el, IMG_FORMAT,
                       "%s: voxel data ends after %zu of %zu bytes (%s): truncated or corrupt file",
                       path, got, bytes, in->err ? in->err : "end of file");
    else if (!plain && (uint64_t)total == (uint64_t)nvox && in_drain(in))
        rc = util_errf(eb, el, IMG_FORMAT,
                       "%s: compressed stream truncated or corrupt after the voxels (%s)", path,
                       in->err);
    if (!rc && swapped && size > 1)
        bswap_n(buf, nvox, size);
    if (rc != IMG_OK) {
        free(buf);
        return rc;
    }
    float *f = malloc(nvox * sizeof *f);
    if (f == NULL) {
        free(buf);
        return util_errf(eb, el, IMG_NOMEM, "%s: out of memory for %zu voxels", path, nvox);
    }
    size_t bad = nii_to_float(buf, h.datatype, nvox, scale, h.scl_slope, h.scl_inter, f);
    free(buf);
    if (bad > 0) {
        free(f);
        return util_errf(eb, el, IMG_FORMAT, "%s: %zu voxels are not finite%s", path, bad,
                    scale ? " after scl_slope/scl_inter" : "");
    }

    /* 3. Reorientation */
    return to_ras(path, f, n, A, perm, flip, IMG_FMT_NIFTI, out, eb, el);
}

int img_read_nifti(const char *path, const img_limits *lim, img_vol *out, char *errbuf,
                   size_t errlen)
{
    if (path == NULL || out == NULL)
        return util_errf(errbuf, errlen, IMG_INVAL, "img_read_nifti: NULL argument");
    if (!ends_with(path, ".nii") && !ends_with(path, ".nii.gz"))
        return util_errf(errbuf, errlen, IMG_UNSUPPORTED, "%s: expected a .nii or .nii.gz file",
                         path);
    struct stat st;
    if (stat(path, &st) != 0)
        return util_errf(errbuf, errlen, IMG_IO, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return util_errf(errbuf, errlen, IMG_IO, "%s: not a regular file", path);
    nii_in in;
    memset(&in, 0, sizeof in);
    in.name = path;
    errno = 0;
    if ((in.gz = gzopen(path, "rb")) == NULL)
        return util_errf(errbuf, errlen, IMG_IO, "%s: %s", path,
                         errno ? strerror(errno) : "out of memory");
    gzbuffer(in.gz, 1u << 17);
    int rc = nii_read(&in, (int64_t)st.st_size, lim, out, errbuf, errlen);
    in_close(&in);
    return rc;
}

int img_read_nifti_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                       img_vol *out, char *errbuf, size_t errlen)
{
    if (name == NULL)
        name = "(memory)";
    if ((data == NULL && len > 0) || out == NULL)
        return util_errf(errbuf, errlen, IMG_INVAL, "img_read_nifti_mem: NULL argument");
    nii_in in;
    memset(&in, 0, sizeof in);
    in.name = name;
    in.mem = data;
    in.len = len;
    in.zmem = len >= 2 && in.mem[0] == 0x1f && in.mem[1] == 0x8b;
    if (in.zmem) {
        if (inflateInit2(&in.zs, 15 + 16) != Z_OK) /* 16: gzip wrapper */
            return util_errf(errbuf, errlen, IMG_NOMEM, "%s: out of memory", name);
        in.zinit = 1;
    }
    int rc = nii_read(&in, len > INT64_MAX ? INT64_MAX : (int64_t)len, lim, out, errbuf, errlen);
    in_close(&in);
    return rc;
}

/* A NIfTI image as read, made 2D: a singleton x or y axis moves to k. */
static int nifti_to_2d(img_vol v, const char *path, img_vol *out, char *errbuf, size_t errlen)
{
    if (v.nz > 1) {
        /* A singleton x or y axis moves to k.  It contributes nothing to
         * the linear index, so the data stay where they are; only the
         * sizes and the affine's columns move. */
        int single = v.nx == 1 ? 0 : v.ny == 1 ? 1 : -1;
        if (single < 0) {
            int nx = v.nx, ny = v.ny, nz = v.nz;
            img_vol_free(&v);
            return util_errf(errbuf, errlen, IMG_INVAL,
                        "%s: a 3D volume (%d x %d x %d), not a 2D image", path, nx, ny, nz);
        }
        int order[3] = {single == 0 ? 1 : 0, 2, single};
        int dims[3] = {v.nx, v.ny, v.nz};
        img_vol w = v;
        for (int a = 0; a < 3; a++) {
            w.spacing[a] = v.spacing[order[a]];
            for (int r = 0; r < 4; r++)
                w.affine[r][a] = v.affine[r][order[a]];
        }
        w.nx = dims[order[0]];
        w.ny = dims[order[1]];
        w.nz = dims[order[2]];
        v = w;
    }
    *out = v;
    return IMG_OK;
}

int img_read_2d(const char *path, const img_limits *lim, img_vol *out, char *errbuf,
                size_t errlen)
{
    if (path == NULL || out == NULL)
        return util_errf(errbuf, errlen, IMG_INVAL, "img_read_2d: NULL argument");
    if (ends_with(path, ".png"))
        return img_read_png(path, lim, out, errbuf, errlen);
    if (!ends_with(path, ".nii") && !ends_with(path, ".nii.gz") && img_is_dicom_path(path))
        return img_read_dicom_2d(path, lim, out, NULL, errbuf, errlen);
    if (!ends_with(path, ".nii") && !ends_with(path, ".nii.gz"))
        return util_errf(errbuf, errlen, IMG_UNSUPPORTED,
                         "%s: expected a .png, .nii, .nii.gz or DICOM image", path);
    img_vol v;
    int rc = img_read_nifti(path, lim, &v, errbuf, errlen);
    return rc ? rc : nifti_to_2d(v, path, out, errbuf, errlen);
}

int img_read_2d_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                    img_vol *out, char *errbuf, size_t errlen)
{
    static const unsigned char png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (name == NULL)
        name = "(memory)";
    if ((data == NULL && len > 0) || out == NULL)
        return util_errf(errbuf, errlen, IMG_INVAL, "img_read_2d_mem: NULL argument");
    if (len >= sizeof png_sig && memcmp(data, png_sig, sizeof png_sig) == 0)
        return img_read_png_mem(data, len, name, lim, out, errbuf, errlen);
    if (img_is_dicom_mem(data, len))
        return img_read_dicom_2d_mem(data, len, name, lim, out, NULL, errbuf, errlen);
    img_vol v;
    int rc = img_read_nifti_mem(data, len, name, lim, &v, errbuf, errlen);
    return rc ? rc : nifti_to_2d(v, name, out, errbuf, errlen);
}

