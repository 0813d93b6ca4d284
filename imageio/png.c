/* png.c - PNG input (imageio.h), from a file or a buffer, through libpng.
 *
 * libpng reports errors by calling an error function that must not
 * return; its default one prints to stderr.  Ours copies the message and
 * longjmps back to img_read_png, and the warning function drops
 * warnings, so a corrupt file is one IMG_FORMAT and never a print.
 */
#include "imageio/imageio.h"
#include "util/util.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>


/* Everything that changes between setjmp and a longjmp lives here, on the
 * heap: automatic variables changed after setjmp are indeterminate after
 * the jump unless volatile. */
typedef struct png_read_ctx {
    FILE *fp;                 /* a file, or NULL */
    const unsigned char *mem; /* or a buffer */
    size_t len, at;
    png_structp png;
    png_infop info;
    unsigned char *rows; /* one row, or the whole image when interlaced */
    png_bytep *rowp;
    float *data;
    char msg[256];
} png_read_ctx;

static void png_error_cb(png_structp png, png_const_charp msg)
{
    png_read_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg != NULL ? msg : "unknown libpng error");
    png_longjmp(png, 1);
}

static void png_warning_cb(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

static void ctx_free(png_read_ctx *c)
{
    if (c->png != NULL)
        png_destroy_read_struct(&c->png, c->info != NULL ? &c->info : NULL, NULL);
    if (c->fp != NULL)
        fclose(c->fp);
    free(c->rows);
    free(c->rowp);
    free(c->data);
    free(c);
}

/* libpng's read function for a buffer: a read past its end is a
 * truncated file. */
static void mem_read_cb(png_structp png, png_bytep dst, size_t n)
{
    png_read_ctx *c = png_get_io_ptr(png);
    if (n > c->len - c->at)
        png_error(png, "the data end before the image does");
    memcpy(dst, c->mem + c->at, n);
    c->at += n;
}

/* One decoded row (after libpng's expansions: 8 or 16 bits per sample,
 * 1 to 4 channels) to grey floats in [0, 1]. */
static void row_to_grey(const unsigned char *row, png_uint_32 w, int channels, int depth,
                        float *dst)
{
    const float scale = depth == 16 ? 1.0f / 65535.0f : 1.0f / 255.0f;
    for (png_uint_32 x = 0; x < w; x++) {
        float s[3];
        int nc = channels >= 3 ? 3 : 1; /* grey(+alpha) or RGB(+alpha) */
        for (int ch = 0; ch < nc; ch++) {
            size_t at = (size_t)x * (size_t)channels + (size_t)ch;
            s[ch] = depth == 16 ? (float)((row[2 * at] << 8) | row[2 * at + 1]) : (float)row[at];
        }
        float g = nc == 3 ? 0.299f * s[0] + 0.587f * s[1] + 0.114f * s[2] : s[0];
        float v = g * scale;
        dst[x] = v > 1.0f ? 1.0f : v; /* the luma sum can round a hair over */
    }
}

/* Decodes the PNG after its 8-byte signature from c's file or buffer
 * (path names it); frees c. */
static int png_read(png_read_ctx *c, const char *path, const img_limits *lim, img_vol *out,
                    char *eb, size_t el)
{
    c->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_error_cb, png_warning_cb);
    if (c->png != NULL)
        c->info = png_create_info_struct(c->png);
    if (c->png == NULL || c->info == NULL) {
        ctx_free(c);
        return util_errf(eb, el, IMG_NOMEM, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(c->png))) {
        char msg[sizeof c->msg];
        memcpy(msg, c->msg, sizeof msg);
        ctx_free(c);
        return util_errf(eb, el, IMG_FORMAT, "%s: corrupt or truncated PNG: %s", path, msg);
    }
    if (c->fp)
        png_init_io(c->png, c->fp);
    else
        png_set_read_fn(c->png, c, mem_read_cb);
    png_set_sig_bytes(c->png, 8);
    png_read_info(c->png, c->info);

    png_uint_32 w = 0, h = 0;
    int depth = 0, color = 0, interlace = 0;
    png_get_IHDR(c->png, c->info, &w, &h, &depth, &color, &interlace, NULL, NULL);
    size_t maxp = lim && lim->max_pixels ? lim->max_pixels : IMG_MAX_PIXELS;
    if ((uint64_t)w * h > (uint64_t)maxp || w > INT32_MAX || h > INT32_MAX) {
        ctx_free(c);
        return util_errf(eb, el, IMG_TOOBIG, "%s: %lu x %lu pixels exceed the limit of %zu", path,
                    (unsigned long)w, (unsigned long)h, maxp);
    }
    /* Everything to 8 or 16 bits per sample, palette to RGB; transparency
     * (tRNS) is alpha we would drop anyway, so it is not expanded. */
    if (color == PNG_COLOR_TYPE_PALETTE)
        png_set_palette_to_rgb(c->png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8)
        png_set_expand_gray_1_2_4_to_8(c->png);
    int passes = png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);
    int channels = png_get_channels(c->png, c->info);
    int odepth = png_get_bit_depth(c->png, c->info);
    size_t rowbytes = png_get_rowbytes(c->png, c->info);
    if ((odepth != 8 && odepth != 16) || channels < 1 || channels > 4 ||
        rowbytes < (size_t)w * (size_t)channels * (size_t)(odepth / 8)) {
        ctx_free(c);
        return util_errf(eb, el, IMG_UNSUPPORTED, "%s: unexpected PNG layout (%d bits, %d channels)",
                    path, odepth, channels);
    }

    /* Interlaced images arrive in passes over the whole picture, so they
     * need all rows at once; the others go one row at a time. */
    size_t nrows = passes > 1 ? h : 1;
    if (lim && lim->admit) {
        int rc = lim->admit(lim->admit_ctx, (size_t)w * h * sizeof *c->data + nrows * rowbytes,
                            path, eb, el);
        if (rc != IMG_OK) {
            ctx_free(c);
            return rc;
        }
    }
    c->data = malloc((size_t)w * h * sizeof *c->data);
    c->rows = malloc(nrows * rowbytes);
    c->rowp = malloc(nrows * sizeof *c->rowp);
    if (c->data == NULL || c->rows == NULL || c->rowp == NULL) {
        ctx_free(c);
        return util_errf(eb, el, IMG_NOMEM, "%s: out of memory for %lu x %lu pixels", path,
                    (unsigned long)w, (unsigned long)h);
    }
    for (size_t y = 0; y < nrows; y++)
        c->rowp[y] = c->rows + y * rowbytes;
    if (passes > 1) {
        png_read_image(c->png, c->rowp);
        for (png_uint_32 y = 0; y < h; y++)
            row_to_grey(c->rowp[y], w, channels, odepth, c->data + (size_t)y * w);
    } else {
        for (png_uint_32 y = 0; y < h; y++) {
            png_read_row(c->png, c->rows, NULL);
            row_to_grey(c->rows, w, channels, odepth, c->data + (size_t)y * w);
        }
    }
    /* Reading to IEND catches a file cut after its pixels. */
    png_read_end(c->png, NULL);

    img_vol v;
    memset(&v, 0, sizeof v);
    v.data = c->data;
    c->data = NULL;
    v.nx = (int)w;
    v.ny = (int)h;
    v.nz = 1;
    v.format = IMG_FMT_PNG;
    for (int a = 0; a < 3; a++) {
        v.spacing[a] = 1;
        v.affine[a][a] = 1;
    }
    v.affine[3][3] = 1;
    ctx_free(c);
    *out = v;
    return IMG_OK;
}

int img_read_png(const char *path, const img_limits *lim, img_vol *out, char *errbuf,
                 size_t errlen)
{
    char *eb = errbuf;
    size_t el = errlen;
    if (path == NULL || out == NULL)
        return util_errf(eb, el, IMG_INVAL, "img_read_png: NULL argument");
    struct stat st;
    if (stat(path, &st) != 0)
        return util_errf(eb, el, IMG_IO, "%s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode))
        return util_errf(eb, el, IMG_IO, "%s: not a regular file", path);

    png_read_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return util_errf(eb, el, IMG_NOMEM, "%s: out of memory", path);
    c->fp = fopen(path, "rb");
    if (c->fp == NULL) {
        int e = errno;
        ctx_free(c);
        return util_errf(eb, el, IMG_IO, "%s: %s", path, strerror(e));
    }
    unsigned char sig[8];
    size_t got = fread(sig, 1, sizeof sig, c->fp);
    if (got != sizeof sig || png_sig_cmp(sig, 0, sizeof sig) != 0) {
        ctx_free(c);
        return util_errf(eb, el, IMG_FORMAT, "%s: not a PNG file (bad signature)", path);
    }
    return png_read(c, path, lim, out, eb, el);
}

int img_read_png_mem(const void *data, size_t len, const char *name, const img_limits *lim,
                     img_vol *out, char *errbuf, size_t errlen)
{
    if (name == NULL)
        name = "(memory)";
    if ((data == NULL && len > 0) || out == NULL)
        return util_errf(errbuf, errlen, IMG_INVAL, "img_read_png_mem: NULL argument");
    if (len < 8 || png_sig_cmp(data, 0, 8) != 0)
        return util_errf(errbuf, errlen, IMG_FORMAT, "%s: not a PNG file (bad signature)", name);
    png_read_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return util_errf(errbuf, errlen, IMG_NOMEM, "%s: out of memory", name);
    c->mem = data;
    c->len = len;
    c->at = 8;
    return png_read(c, name, lim, out, errbuf, errlen);
}
