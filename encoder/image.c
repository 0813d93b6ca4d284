/* image.c - NIfTI input, reorientation to RAS, resampling and intensity
 * scaling for the encoder (see image.h; PNG input is in png.c).
 *
 * libnifti reads the header (we byte-swap it when needed, see
 * enc_img_read_nifti); we check every field we use before allocating
 * anything, then read the first volume's bytes ourselves with zlib (which
 * reads plain files too).  libnifti's brick and collapsed-image readers
 * print to stderr even at debug level 0, and nifti_image_load reads every
 * volume of a 4D file, so neither fits a library that must stay quiet and
 * bounded.
 */
#include "encoder/internal.h"
#include "encoder/image.h"

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


void enc_vol_free(enc_vol *v)
{
    if (v == NULL)
        return;
    free(v->data);
    memset(v, 0, sizeof *v);
}

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
                    return enc__fail(eb, el, ENC_FORMAT, "%s: sform_code = %d but %s[%d] = %g", path,
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
                        return enc__fail(eb, el, ENC_FORMAT, "%s: qform_code = %d but pixdim[%d] = %g",
                                    path, h->qform_code, a + 1, d[a]);
                    return enc__fail(eb, el, ENC_FORMAT,
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
                    return enc__fail(eb, el, ENC_FORMAT, "%s: qform_code = %d but %s = %g", path,
                                h->qform_code, qn[i], h->quatern[i]);
                if (!isfinite(h->qoffset[i]))
                    return enc__fail(eb, el, ENC_FORMAT, "%s: qform_code = %d but %s = %g", path,
                                h->qform_code, on[i], h->qoffset[i]);
            }
            double b = h->quatern[0], c = h->quatern[1], q = h->quatern[2];
            double s = b * b + c * c + q * q, a;
            /* The file stores (b, c, d) of a unit quaternion and implies
             * a = sqrt(1 - b^2 - c^2 - d^2).  Float rounding can push the
             * sum a little over 1 (a = 0, a 180-degree rotation): renormalise
             * that, refuse anything clearly outside the unit ball. */
            if (s > 1.0 + 1e-3)
                return enc__fail(eb, el, ENC_FORMAT,
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
            return enc__fail(eb, el, ENC_FORMAT,
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
            return enc__fail(eb, el, ENC_FORMAT,
                        "%s: %s is degenerate (voxel axes i and j are parallel)", path, *src);
        for (int r = 0; r < 3; r++)
            A[r][2] = nrm[r] / nn;
    }
    return ENC_OK;
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
            return enc__fail(eb, el, ENC_FORMAT,
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
        return enc__fail(eb, el, ENC_FORMAT, "%s: %s is singular (determinant %g)", path, src, det);
    for (int a = 0; a < 3; a++) {
        perm[a] = owner[a];
        flip[a] = A[a][owner[a]] < 0;
    }
    return ENC_OK;
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

/* Reads `bytes` bytes of voxels at vox_offset: the first volume.  zlib
 * reads gzip and plain files alike.  The stored sizeof_hdr tells the byte
 * order (libnifti swapped the header for us but does not say so).  With
 * `drain`, the rest of the stream is read too, so that a gzip file cut
 * after its voxels or with a bad CRC is caught as well. */
static int nii_read_voxels(const char *path, int version, int64_t vox_offset, void *buf,
                           size_t bytes, int size, int drain, char *eb, size_t el)
{
    gzFile gz = gzopen(path, "rb");
    if (gz == NULL)
        return enc__fail(eb, el, ENC_IO, "%s: cannot reopen: %s", path,
                    errno ? strerror(errno) : "out of memory");
    gzbuffer(gz, 1u << 17);
    int rc = ENC_OK;
    const char *zm;
    uint32_t sz = 0;
    /* zlib inflates ahead, so damage well past the header can already
     * fail this first small read. */
    if (gzread(gz, &sz, sizeof sz) != (int)sizeof sz) {
        zm = gz_msg(gz, path);
        rc = zm ? enc__fail(eb, el, ENC_FORMAT, "%s: corrupt compressed stream (%s)", path, zm)
                : enc__fail(eb, el, ENC_FORMAT, "%s: file changed while being read", path);
        goto out;
    }
    uint32_t want = version == 1 ? 348 : 540;
    if (sz != want && bswap32(sz) != want) {
        rc = enc__fail(eb, el, ENC_FORMAT, "%s: file changed while being read", path);
        goto out;
    }
    if (gzseek(gz, (z_off_t)vox_offset, SEEK_SET) != (z_off_t)vox_offset) {
        zm = gz_msg(gz, path);
        rc = enc__fail(eb, el, ENC_FORMAT, "%s: cannot reach vox_offset %lld (%s)", path,
                  (long long)vox_offset, zm ? zm : "file too short");
        goto out;
    }
    /* Chunks keep each call inside gzread's int-sized return. */
    size_t done = 0;
    while (done < bytes) {
        unsigned chunk = bytes - done > (1u << 26) ? 1u << 26 : (unsigned)(bytes - done);
        int got = gzread(gz, (char *)buf + done, chunk);
        if (got > 0)
            done += (size_t)got;
        if (got != (int)chunk) {
            zm = gz_msg(gz, path);
            rc = enc__fail(eb, el, ENC_FORMAT,
                      "%s: voxel data ends after %zu of %zu bytes (%s): truncated or corrupt file",
                      path, done, bytes, zm ? zm : "end of file");
            goto out;
        }
    }
    if (drain) {
        char sink[4096];
        int got;
        while ((got = gzread(gz, sink, sizeof sink)) > 0)
            ;
        zm = gz_msg(gz, path);
        if (got < 0 || zm != NULL) {
            rc = enc__fail(eb, el, ENC_FORMAT,
                      "%s: compressed stream truncated or corrupt after the voxels (%s)", path,
                      zm ? zm : "read error");
            goto out;
        }
    }
    if (sz != want && size > 1)
        bswap_n(buf, bytes / (size_t)size, size);
out:
    gzclose(gz);
    return rc;
}

/* Everything checkable in the header before reading voxels: dims, the
 * size limit, datatype, vox_offset, then the file's length.  n gets the
 * spatial size (nz = 1 for a 2D file). */
static int nii_check(const char *path, const nii_hdr *h, const enc_img_limits *lim,
                     const struct stat *st, int gz, int64_t n[3], int64_t *total_out,
                     char *eb, size_t el)
{
    int64_t nd = h->dim[0];
    if (nd < 2 || nd > 7)
        return enc__fail(eb, el, ENC_FORMAT, "%s: dim[0] = %lld (must be 2..7)", path, (long long)nd);
    for (int i = 1; i <= nd; i++)
        if (h->dim[i] < 1)
            return enc__fail(eb, el, ENC_FORMAT, "%s: dim[%d] = %lld", path, i, (long long)h->dim[i]);
    n[0] = h->dim[1];
    n[1] = h->dim[2];
    n[2] = nd >= 3 ? h->dim[3] : 1;

    size_t maxv = lim && lim->max_voxels ? lim->max_voxels : ENC_IMG_MAX_VOXELS;
    int64_t nvox = 0, tmp;
    int big = !mul_ok(n[0], n[1], &tmp) || !mul_ok(tmp, n[2], &nvox) ||
              (uint64_t)nvox > (uint64_t)maxv || n[0] > INT_MAX || n[1] > INT_MAX ||
              n[2] > INT_MAX;
    if (big)
        return enc__fail(eb, el, ENC_TOOBIG,
                    "%s: dims %lld x %lld x %lld = %.0f voxels exceed the limit of %zu", path,
                    (long long)n[0], (long long)n[1], (long long)n[2],
                    (double)n[0] * (double)n[1] * (double)n[2], maxv);

    int size = nii_type_size(h->datatype);
    if (size == 0)
        return enc__fail(eb, el, ENC_UNSUPPORTED, "%s: datatype = %d (%s) is not supported", path,
                    h->datatype, nii_type_name(h->datatype));

    int64_t minoff = h->version == 1 ? 352 : 544;
    if (!(h->vox_offset >= (double)minoff && h->vox_offset <= 9.0e18 &&
          h->vox_offset == floor(h->vox_offset)))
        return enc__fail(eb, el, ENC_FORMAT, "%s: vox_offset = %g (must be a whole number >= %lld)",
                    path, h->vox_offset, (long long)minoff);
    int64_t off = (int64_t)h->vox_offset;

    /* Every volume the header declares must be in the file, even though
     * only the first is read.  A compressed length says nothing about the
     * data length; there the read itself finds a short file. */
    int64_t total = 1, bytes;
    for (int i = 1; i <= nd; i++)
        if (!mul_ok(total, h->dim[i], &total))
            return enc__fail(eb, el, ENC_TOOBIG, "%s: dim[1..%lld] multiply past 2^63 voxels", path,
                        (long long)nd);
    if (!mul_ok(total, size, &bytes) || bytes > INT64_MAX - off)
        return enc__fail(eb, el, ENC_TOOBIG, "%s: %lld voxels of %d bytes do not fit in a file", path,
                    (long long)total, size);
    if (!gz && (int64_t)st->st_size < off + bytes)
        return enc__fail(eb, el, ENC_FORMAT,
                    "%s: file holds %lld bytes, the header needs %lld (vox_offset %lld + %lld "
                    "voxels x %d bytes): truncated file",
                    path, (long long)st->st_size, (long long)(off + bytes), (long long)off,
                    (long long)total, size);
    *total_out = total;
    return ENC_OK;
}

int enc_img_read_nifti(const char *path, const enc_img_limits *lim, enc_vol *out, char *errbuf,
                       size_t errlen)
{
    char *eb = errbuf;
    size_t el = errlen;
    if (path == NULL || out == NULL)
        return enc__fail(eb, el, ENC_INVAL, "enc_img_read_nifti: NULL argument");
    if (!ends_with(path, ".nii") && !ends_with(path, ".nii.gz"))
        return enc__fail(eb, el, ENC_UNSUPPORTED, "%s: expected a .nii or .nii.gz file", path);
    struct stat st;
    if (stat(path, &st) != 0)
        return enc__fail(eb, el, ENC_IO, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return enc__fail(eb, el, ENC_IO, "%s: not a regular file", path);
    /* Our own open first: libnifti would say nothing useful about errno,
     * and the first two bytes tell a gzip file (1f 8b) whatever its name. */
    FILE *probe = fopen(path, "rb");
    if (probe == NULL)
        return enc__fail(eb, el, ENC_IO, "%s: %s", path, strerror(errno));
    unsigned char m2[2] = {0, 0};
    int gz = fread(m2, 1, 2, probe) == 2 && m2[0] == 0x1f && m2[1] == 0x8b;
    fclose(probe);
    pthread_once(&nifti_quiet_once, nifti_quiet);

    /* 1. The header alone, checked field by field.  libnifti 3.0.1's
     * nifti_read_header detects a byte-swapped header but hands it back
     * unswapped (and its check = 1 prints even at debug level 0), so we
     * swap it ourselves with libnifti's swap_nifti_header. */
    int nver = 0;
    void *raw = nifti_read_header(path, &nver, 0);
    if (raw != NULL && (nver == 1 || nver == 2)) {
        uint32_t sz, want = nver == 1 ? 348 : 540;
        memcpy(&sz, raw, sizeof sz);
        if (sz != want && bswap32(sz) == want)
            swap_nifti_header(raw, nver);
        memcpy(&sz, raw, sizeof sz);
        if (sz != want)
            nver = -1;
    }
    if (raw == NULL || (nver != 1 && nver != 2)) {
        free(raw);
        return enc__fail(eb, el, ENC_FORMAT,
                    "%s: no NIfTI-1 or NIfTI-2 header (bad sizeof_hdr or magic, or the file is "
                    "too short)",
                    path);
    }
    nii_hdr h;
    char magic[9] = {0};
    nii_from_raw(raw, nver, &h, magic, sizeof magic - 1);
    free(raw);
    if (memcmp(magic, nver == 1 ? "ni1" : "ni2", 4) == 0)
        return enc__fail(eb, el, ENC_UNSUPPORTED,
                    "%s: magic \"%s\" means a .hdr/.img pair; only single-file NIfTI is read",
                    path, magic);
    if (memcmp(magic, nver == 1 ? "n+1" : "n+2", 4) != 0)
        return enc__fail(eb, el, ENC_FORMAT, "%s: magic is not \"%s\" (not a NIfTI-%d file)", path,
                    nver == 1 ? "n+1" : "n+2", nver);

    int64_t n[3], total = 0;
    int rc = nii_check(path, &h, lim, &st, gz, n, &total, eb, el);
    if (rc != ENC_OK)
        return rc;
    int size = nii_type_size(h.datatype);
    int used[3] = {1, 1, h.dim[0] >= 3};
    double A[4][4];
    const char *src;
    int perm[3], flip[3];
    if ((rc = nii_affine(path, &h, used, A, &src, eb, el)) != ENC_OK ||
        (rc = nii_orient(path, src, A, perm, flip, eb, el)) != ENC_OK)
        return rc;

    /* Scaling: slope 0 or not finite means none (NIfTI-1 standard); a
     * valid slope with a broken intercept is a broken header. */
    int scale = h.scl_slope != 0 && isfinite(h.scl_slope);
    if (scale && !isfinite(h.scl_inter))
        return enc__fail(eb, el, ENC_FORMAT, "%s: scl_slope = %g but scl_inter = %g", path,
                    h.scl_slope, h.scl_inter);

    /* 2. The first volume.  The float copy is made only once the bytes are
     * all there: a .nii.gz that lies about its size costs no more than
     * what it actually holds. */
    size_t nvox = (size_t)n[0] * (size_t)n[1] * (size_t)n[2];
    void *buf = malloc(nvox * (size_t)size);
    if (buf == NULL)
        return enc__fail(eb, el, ENC_NOMEM, "%s: out of memory for %zu voxels", path, nvox);
    rc = nii_read_voxels(path, h.version, (int64_t)h.vox_offset, buf, nvox * (size_t)size, size,
                         gz && (uint64_t)total == (uint64_t)nvox, eb, el);
    if (rc != ENC_OK) {
        free(buf);
        return rc;
    }
    float *f = malloc(nvox * sizeof *f);
    if (f == NULL) {
        free(buf);
        return enc__fail(eb, el, ENC_NOMEM, "%s: out of memory for %zu voxels", path, nvox);
    }
    size_t bad = nii_to_float(buf, h.datatype, nvox, scale, h.scl_slope, h.scl_inter, f);
    free(buf);
    if (bad > 0) {
        free(f);
        return enc__fail(eb, el, ENC_FORMAT, "%s: %zu voxels are not finite%s", path, bad,
                    scale ? " after scl_slope/scl_inter" : "");
    }

    /* 3. Reorientation: a permutation with flips, one pass. */
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
            return enc__fail(eb, el, ENC_NOMEM, "%s: out of memory for %zu voxels", path, nvox);
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

    enc_vol v;
    memset(&v, 0, sizeof v);
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
    return ENC_OK;
}

int enc_img_read_2d(const char *path, const enc_img_limits *lim, enc_vol *out, char *errbuf,
                    size_t errlen)
{
    if (path == NULL || out == NULL)
        return enc__fail(errbuf, errlen, ENC_INVAL, "enc_img_read_2d: NULL argument");
    if (ends_with(path, ".png"))
        return enc_img_read_png(path, lim, out, errbuf, errlen);
    if (!ends_with(path, ".nii") && !ends_with(path, ".nii.gz"))
        return enc__fail(errbuf, errlen, ENC_UNSUPPORTED,
                    "%s: expected a .png, .nii or .nii.gz image", path);
    enc_vol v;
    int rc = enc_img_read_nifti(path, lim, &v, errbuf, errlen);
    if (rc != ENC_OK)
        return rc;
    if (v.nz > 1) {
        /* A singleton x or y axis moves to k.  It contributes nothing to
         * the linear index, so the data stay where they are; only the
         * sizes and the affine's columns move. */
        int single = v.nx == 1 ? 0 : v.ny == 1 ? 1 : -1;
        if (single < 0) {
            int nx = v.nx, ny = v.ny, nz = v.nz;
            enc_vol_free(&v);
            return enc__fail(errbuf, errlen, ENC_INVAL,
                        "%s: a 3D volume (%d x %d x %d), not a 2D image", path, nx, ny, nz);
        }
        int order[3] = {single == 0 ? 1 : 0, 2, single};
        int dims[3] = {v.nx, v.ny, v.nz};
        enc_vol w = v;
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
    return ENC_OK;
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

int enc_img_resample(const enc_vol *in, const float target_spacing[3], int nx, int ny, int nz,
                     enc_vol *out, char *errbuf, size_t errlen)
{
    char *eb = errbuf;
    size_t el = errlen;
    if (in == NULL || in->data == NULL || target_spacing == NULL || out == NULL)
        return enc__fail(eb, el, ENC_INVAL, "resample: NULL argument");
    const int nin[3] = {in->nx, in->ny, in->nz}, nout[3] = {nx, ny, nz};
    for (int a = 0; a < 3; a++) {
        if (nin[a] < 1)
            return enc__fail(eb, el, ENC_INVAL, "resample: input size[%d] = %d", a, nin[a]);
        if (nout[a] < 1)
            return enc__fail(eb, el, ENC_INVAL, "resample: output size[%d] = %d", a, nout[a]);
        if (!(isfinite(in->spacing[a]) && in->spacing[a] > 0))
            return enc__fail(eb, el, ENC_INVAL, "resample: input spacing[%d] = %g", a,
                        (double)in->spacing[a]);
        if (!(isfinite(target_spacing[a]) && target_spacing[a] > 0))
            return enc__fail(eb, el, ENC_INVAL, "resample: target spacing[%d] = %g", a,
                        (double)target_spacing[a]);
    }
    size_t plane = (size_t)nx * (size_t)ny, total;
    if (plane / (size_t)nx != (size_t)ny || (total = plane * (size_t)nz) / plane != (size_t)nz ||
        total > SIZE_MAX / sizeof(float))
        return enc__fail(eb, el, ENC_TOOBIG, "resample: %d x %d x %d voxels overflow", nx, ny, nz);

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
        return enc__fail(eb, el, ENC_NOMEM, "resample: out of memory for %zu voxels", total);
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

    enc_vol v;
    memset(&v, 0, sizeof v);
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
    return ENC_OK;
}

/* ---- intensities ------------------------------------------------------------- */

void enc_img_ct_window(enc_vol *v, float lo, float hi)
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

int enc_img_mr_scale(enc_vol *v, float p_lo, float p_hi)
{
    if (v == NULL || !(p_lo >= 0 && p_lo < p_hi && p_hi <= 100))
        return ENC_INVAL;
    size_t n = (size_t)v->nx * (size_t)v->ny * (size_t)v->nz, m = 0;
    if (n == 0)
        return ENC_OK;
    float *tmp = malloc(n * sizeof *tmp);
    if (tmp == NULL)
        return ENC_NOMEM;
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
        return ENC_OK;
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
    return ENC_OK;
}
