/* imageio/dicom_walk.c: a structural check of a DICOM Part 10 file before
 * GDCM sees it.  Debian's GDCM is built with assertions, and a file cut
 * short or with a corrupt element length can reach one (the process
 * aborts) instead of an error.  The walk follows every element, sequence,
 * item and pixel data fragment (PS3.5 section 7) and refuses a file in
 * which any of them runs past the end, so that GDCM only ever reads files
 * whose structure holds together.  It knows no data dictionary: in implicit
 * VR a defined-length value is taken whole (what is inside a sequence of
 * defined length is then GDCM's to check). */
#include "imageio/dicom_internal.h"
#include "imageio/imageio.h"
#include "util/util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define UNDEF 0xffffffffu
#define MAX_DEPTH 32
#define MAX_INFLATED ((size_t)1 << 31) /* a deflated dataset inflates to at most 2 GiB */

typedef struct walk {
    const unsigned char *b;
    size_t n;
    int implicit, big;
    const char *name;
    char *eb;
    size_t el;
} walk;

static unsigned u16(const walk *w, size_t p)
{
    return w->big ? (unsigned)(w->b[p] << 8 | w->b[p + 1]) : (unsigned)(w->b[p] | w->b[p + 1] << 8);
}

static uint32_t u32(const walk *w, size_t p)
{
    const unsigned char *q = w->b + p;
    return w->big ? (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3]
                  : (uint32_t)q[3] << 24 | (uint32_t)q[2] << 16 | (uint32_t)q[1] << 8 | q[0];
}

static int bad(const walk *w, size_t p, unsigned g, unsigned e, const char *what)
{
    return util_errf(w->eb, w->el, IMG_FORMAT, "%s: %s at byte %zu (element (%04x,%04x)): "
                     "truncated or corrupt", w->name, what, p, g, e);
}

static int long_vr(const char vr[2])
{
    static const char *const L[] = {"OB", "OW", "OF", "SQ", "UT", "UN", "UC", "UR",
                                    "OD", "OL", "OV", "SV", "UV"};
    for (size_t i = 0; i < sizeof L / sizeof *L; i++)
        if (vr[0] == L[i][0] && vr[1] == L[i][1])
            return 1;
    return 0;
}

/* One of PS3.5's value representations (GDCM takes an unknown pair of
 * letters for implicit VR and can assert on what follows). */
static int valid_vr(const char vr[2])
{
    static const char V[] = "AEASATCSDADSDTFDFLISLOLTOBODOFOLOVOWPNSHSLSQSSSTSVTMUCUIULUNURUSUTUV";
    for (size_t i = 0; i + 1 < sizeof V; i += 2)
        if (vr[0] == V[i] && vr[1] == V[i + 1])
            return 1;
    return 0;
}

static int dataset(walk *w, size_t *p, size_t end, int depth, int in_item);

/* The items of a sequence from *p: to end (defined length) or to the
 * sequence delimiter (end == SIZE_MAX).  fragments: encapsulated pixel
 * data, whose items hold bytes, not datasets. */
static int items(walk *w, size_t *p, size_t end, int depth, int fragments, int implicit)
{
    int save = w->implicit, rc = IMG_OK;
    int save_big = w->big;
    w->implicit = implicit;
    if (implicit)
        w->big = 0; /* UN with undefined length: implicit VR little endian (PS3.5 6.2.2) */
    for (;;) {
        if (end != SIZE_MAX && *p == end)
            break;
        size_t lim = end == SIZE_MAX ? w->n : end;
        if (*p + 8 > lim) {
            rc = bad(w, *p, 0xfffe, 0xe000, "a sequence item header runs past the end");
            break;
        }
        unsigned g = u16(w, *p), e = u16(w, *p + 2);
        uint32_t len = u32(w, *p + 4);
        if (g != 0xfffe || (e != 0xe000 && e != 0xe0dd)) {
            rc = bad(w, *p, g, e, "an element where a sequence item should be");
            break;
        }
        *p += 8;
        if (e == 0xe0dd) { /* sequence delimiter */
            if (end != SIZE_MAX)
                rc = bad(w, *p - 8, g, e, "a sequence delimiter in a sequence of defined length");
            break;
        }
        if (len == UNDEF) {
            if (fragments) {
                rc = bad(w, *p - 8, g, e, "a pixel data fragment of undefined length");
                break;
            }
            if ((rc = dataset(w, p, SIZE_MAX, depth + 1, 1)))
                break;
        } else {
            if (len > lim - *p) {
                rc = bad(w, *p - 8, g, e, "a sequence item runs past the end");
                break;
            }
            if (!fragments && (rc = dataset(w, p, *p + len, depth + 1, 0)))
                break;
            if (fragments)
                *p += len;
        }
    }
    w->implicit = save;
    w->big = save_big;
    return rc;
}

/* Elements from *p to end (SIZE_MAX: to an item delimiter, in_item). */
static int dataset(walk *w, size_t *p, size_t end, int depth, int in_item)
{
    if (depth > MAX_DEPTH)
        return bad(w, *p, 0, 0, "sequences nested too deep");
    size_t lim = end == SIZE_MAX ? w->n : end;
    while (*p < lim) {
        if (*p + 8 > lim)
            return bad(w, *p, 0, 0, "an element header runs past the end");
        unsigned g = u16(w, *p), e = u16(w, *p + 2);
        if (g == 0xfffe) {
            uint32_t len = u32(w, *p + 4);
            *p += 8;
            if (e == 0xe00d && in_item && end == SIZE_MAX && len == 0)
                return IMG_OK; /* item delimiter */
            return bad(w, *p - 8, g, e, "a stray item or delimiter tag");
        }
        uint32_t len;
        char vr[2] = {0, 0};
        if (w->implicit) {
            len = u32(w, *p + 4);
            *p += 8;
        } else {
            vr[0] = (char)w->b[*p + 4];
            vr[1] = (char)w->b[*p + 5];
            if (!valid_vr(vr))
                return bad(w, *p, g, e, "an unknown value representation");
            if (long_vr(vr)) {
                if (*p + 12 > lim)
                    return bad(w, *p, g, e, "an element header runs past the end");
                len = u32(w, *p + 8);
                *p += 12;
            } else {
                len = u16(w, *p + 6);
                *p += 8;
            }
        }
        int rc;
        if (len == UNDEF) {
            if (w->implicit || (vr[0] == 'S' && vr[1] == 'Q'))
                rc = items(w, p, SIZE_MAX, depth, 0, w->implicit);
            else if (vr[0] == 'U' && vr[1] == 'N')
                rc = items(w, p, SIZE_MAX, depth, 0, 1);
            else if (g == 0x7fe0 && (vr[0] == 'O' && (vr[1] == 'B' || vr[1] == 'W')))
                rc = items(w, p, SIZE_MAX, depth, 1, 0);
            else
                rc = bad(w, *p, g, e, "an undefined length on a value that cannot have one");
            if (rc)
                return rc;
            continue;
        }
        if (len > lim - *p)
            return bad(w, *p, g, e, "a value runs past the end");
        if (!w->implicit && vr[0] == 'S' && vr[1] == 'Q') {
            if ((rc = items(w, p, *p + len, depth, 0, 0)))
                return rc;
        } else if (w->implicit && len >= 8 && u16(w, *p) == 0xfffe && u16(w, *p + 2) == 0xe000) {
            /* implicit VR: a value that begins with an item is a sequence of
             * defined length (the reader parses it as one) */
            if ((rc = items(w, p, *p + len, depth, 0, 1)))
                return rc;
        } else {
            *p += len;
        }
    }
    if (end == SIZE_MAX && in_item)
        return bad(w, *p, 0, 0, "an item of undefined length has no delimiter");
    return IMG_OK;
}

int img__dcm_walk(const unsigned char *b, size_t n, const char *name, char *eb, size_t el)
{
    if (n < 132 || memcmp(b + 128, "DICM", 4))
        return util_errf(eb, el, IMG_FORMAT, "%s: not a DICOM Part 10 file (no 'DICM' at byte 128)",
                         name);
    /* the file meta group: explicit VR little endian, group 0002 */
    walk w = {b, n, 0, 0, name, eb, el};
    size_t p = 132, start = 132;
    char ts[68] = "";
    size_t q = start, gstart = 0;
    uint32_t glen = 0;
    int have_glen = 0;
    while (q + 8 <= n && u16(&w, q) == 0x0002) { /* one element at a time, to the group's end */
        unsigned e = u16(&w, q + 2);
        char vr[2] = {(char)b[q + 4], (char)b[q + 5]};
        uint32_t len;
        size_t hdr;
        if (!valid_vr(vr))
            return bad(&w, q, 0x0002, e, "a corrupt file meta element (unknown value representation)");
        if (long_vr(vr)) {
            if (q + 12 > n)
                return bad(&w, q, 0x0002, e, "the file meta information runs past the end");
            len = u32(&w, q + 8);
            hdr = 12;
        } else {
            len = u16(&w, q + 6);
            hdr = 8;
        }
        if (len == UNDEF || len > n - q - hdr)
            return bad(&w, q, 0x0002, e, "the file meta information runs past the end");
        if (e == 0x0000) { /* the group length: the rest of the group, in bytes */
            if (len != 4)
                return bad(&w, q, 0x0002, e, "a file meta group length that is not 4 bytes");
            glen = u32(&w, q + hdr);
            gstart = q + hdr + len;
            have_glen = 1;
        }
        if (e == 0x0010) {
            size_t k = len < sizeof ts - 1 ? len : sizeof ts - 1;
            memcpy(ts, b + q + hdr, k);
            ts[k] = '\0';
            while (k && (ts[k - 1] == ' ' || ts[k - 1] == '\0'))
                ts[--k] = '\0';
        }
        q += hdr + len;
    }
    p = q;
    if (p == start)
        return util_errf(eb, el, IMG_FORMAT, "%s: no file meta information after 'DICM'", name);
    /* GDCM reads the group by its length and asserts when the two disagree
     * or when nothing follows the group */
    if (have_glen && (size_t)glen != p - gstart)
        return util_errf(eb, el, IMG_FORMAT, "%s: the file meta group length says %u bytes, its "
                         "elements take %zu: corrupt", name, (unsigned)glen, p - gstart);
    if (p + 8 > n)
        return util_errf(eb, el, IMG_FORMAT, "%s: the file ends after its file meta information: "
                         "truncated", name);
    if (!strcmp(ts, "1.2.840.10008.1.2.1.99")) { /* deflated: the rest is raw deflate */
        z_stream z;
        memset(&z, 0, sizeof z);
        if (inflateInit2(&z, -15) != Z_OK)
            return util_errf(eb, el, IMG_NOMEM, "%s: out of memory", name);
        size_t cap = (n - p) * 4 + 4096, got = 0;
        unsigned char *out = malloc(cap);
        int zr = Z_OK, rc = IMG_OK;
        z.next_in = (unsigned char *)(uintptr_t)(b + p);
        z.avail_in = (uInt)(n - p);
        while (out && zr != Z_STREAM_END) {
            if (got == cap) {
                size_t nc = cap * 2;
                unsigned char *no = nc <= MAX_INFLATED ? realloc(out, nc) : NULL;
                if (!no) {
                    rc = nc > MAX_INFLATED ? util_errf(eb, el, IMG_TOOBIG, "%s: the deflated dataset "
                                                       "inflates past 2 GiB", name)
                                           : util_errf(eb, el, IMG_NOMEM, "%s: out of memory", name);
                    break;
                }
                out = no;
                cap = nc;
            }
            z.next_out = out + got;
            z.avail_out = (uInt)(cap - got);
            zr = inflate(&z, Z_NO_FLUSH);
            got = cap - z.avail_out;
            if (zr != Z_OK && zr != Z_STREAM_END) {
                rc = util_errf(eb, el, IMG_FORMAT, "%s: the deflated dataset is corrupt (%s)", name,
                               z.msg ? z.msg : "inflate failed");
                break;
            }
            if (zr == Z_OK && z.avail_in == 0 && z.avail_out != 0) {
                rc = util_errf(eb, el, IMG_FORMAT, "%s: the deflated dataset is cut short: "
                               "truncated", name);
                break;
            }
        }
        inflateEnd(&z);
        if (!out)
            return util_errf(eb, el, IMG_NOMEM, "%s: out of memory", name);
        if (!rc) {
            walk d = {out, got, 0, 0, name, eb, el};
            size_t s = 0;
            rc = dataset(&d, &s, got, 0, 0);
        }
        free(out);
        return rc;
    }
    w.implicit = !strcmp(ts, "1.2.840.10008.1.2");
    w.big = !strcmp(ts, "1.2.840.10008.1.2.2");
    return dataset(&w, &p, n, 0, 0);
}
