/* pngw.c - an 8-bit greyscale PNG writer (zlib), for previews.
 *
 * Signature, IHDR, one IDAT of the zlib-compressed rows (each prefixed with
 * filter type 0, "None"), IEND; every chunk with its CRC-32.  Enough for
 * any viewer, and no libpng write state to set up per request. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <string.h>
#include <zlib.h>

#include "net/internal.h"

static void be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* Writes length, type, data and CRC at p; returns the bytes written. */
static size_t chunk(unsigned char *p, const char *type, const unsigned char *data, uint32_t n)
{
    be32(p, n);
    memcpy(p + 4, type, 4);
    if (n && data != p + 8)
        memmove(p + 8, data, n);
    uLong crc = crc32(0L, Z_NULL, 0);
    crc = crc32(crc, p + 4, 4 + n);
    be32(p + 8 + n, (uint32_t)crc);
    return 12 + (size_t)n;
}

int net_png_grey8(net_arena *a, const uint8_t *px, uint32_t w, uint32_t h, void **out,
                  size_t *len)
{
    if (!w || !h || w > 65536 || h > 65536)
        return NET_INVAL;
    size_t raw_len = (size_t)h * (w + 1);
    unsigned char *raw = net_arena_alloc(a, raw_len);
    if (!raw)
        return NET_NOMEM;
    for (uint32_t y = 0; y < h; y++) {
        raw[(size_t)y * (w + 1)] = 0;
        memcpy(raw + (size_t)y * (w + 1) + 1, px + (size_t)y * w, w);
    }
    uLong zcap = compressBound((uLong)raw_len);
    size_t cap = 8 + 25 + 12 + (size_t)zcap + 12;
    unsigned char *png = net_arena_alloc(a, cap);
    if (!png)
        return NET_NOMEM;
    static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    memcpy(png, sig, 8);
    size_t pos = 8;
    unsigned char ihdr[13];
    be32(ihdr, w);
    be32(ihdr + 4, h);
    ihdr[8] = 8;  /* bit depth */
    ihdr[9] = 0;  /* greyscale */
    ihdr[10] = 0; /* deflate */
    ihdr[11] = 0; /* adaptive filtering (all rows "None") */
    ihdr[12] = 0; /* no interlace */
    pos += chunk(png + pos, "IHDR", ihdr, 13);
    uLongf zlen = zcap;
    if (compress2(png + pos + 8, &zlen, raw, (uLong)raw_len, 6) != Z_OK)
        return NET_NOMEM;
    pos += chunk(png + pos, "IDAT", png + pos + 8, (uint32_t)zlen);
    pos += chunk(png + pos, "IEND", NULL, 0);
    *out = png;
    *len = pos;
    return NET_OK;
}
