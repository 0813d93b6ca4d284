/* util/zip.c: the entries of a zip archive in memory (a DICOM series
 * uploaded as one zip, a PyTorch checkpoint).  Stored and deflated entries (APPNOTE 6.3: the end
 * of central directory record, the central directory, each local header);
 * ZIP64, encryption and other methods are refused.  Sizes are checked
 * against a budget before anything is inflated, and every entry's inflated
 * length and CRC-32 against what the directory says. */
#include "util/util.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static unsigned le16(const unsigned char *p) { return (unsigned)(p[0] | p[1] << 8); }

int util_is_zip(const void *data, size_t len)
{
    return data && len >= 4 && !memcmp(data, "PK\x03\x04", 4);
}

void util_zip_free(util_zip_entry *e, int n)
{
    for (int i = 0; e && i < n; i++) {
        free(e[i].name);
        free(e[i].data);
    }
    free(e);
}

/* Whether an entry is a file worth reading: not a folder, not macOS
 * metadata, not hidden, not a DICOMDIR. */
static int wanted(const char *name)
{
    size_t n = strlen(name);
    if (!n || name[n - 1] == '/' || !strncmp(name, "__MACOSX/", 9))
        return 0;
    const char *b = strrchr(name, '/');
    b = b ? b + 1 : name;
    return b[0] != '.' && strcasecmp(b, "DICOMDIR") != 0;
}

int util_zip_read(const unsigned char *b, size_t n, const char *name, size_t max_total,
                  int max_entries, util_zip_entry **out, int *count, char *eb, size_t el)
{
    *out = NULL;
    *count = 0;
    /* the end of central directory record: 22 bytes and a comment of up
     * to 65535, at the end */
    size_t eocd = SIZE_MAX;
    for (size_t back = 22; back <= n && back <= 22 + 65535; back++)
        if (le32(b + n - back) == 0x06054b50) {
            eocd = n - back;
            break;
        }
    if (eocd == SIZE_MAX)
        return util_errf(eb, el, UTIL_ZIP_FORMAT, "%s: a zip without its end of central directory: "
                         "truncated or not a zip", name);
    unsigned entries = le16(b + eocd + 10);
    uint32_t cd_size = le32(b + eocd + 12), cd_off = le32(b + eocd + 16);
    if (entries == 0xffff || cd_size == 0xffffffffu || cd_off == 0xffffffffu)
        return util_errf(eb, el, UTIL_ZIP_UNSUPPORTED, "%s: a ZIP64 archive (not supported)", name);
    if (le16(b + eocd + 4) || le16(b + eocd + 6))
        return util_errf(eb, el, UTIL_ZIP_UNSUPPORTED, "%s: a multi-disk zip (not supported)", name);
    if ((size_t)cd_off > eocd || (size_t)cd_size > eocd - cd_off)
        return util_errf(eb, el, UTIL_ZIP_FORMAT, "%s: the zip's central directory lies outside it",
                         name);
    if ((int)entries > max_entries)
        return util_errf(eb, el, UTIL_ZIP_TOOBIG, "%s: %u entries, more than %d", name, entries,
                         max_entries);
    util_zip_entry *e = calloc(entries ? entries : 1, sizeof *e);
    if (!e)
        return util_errf(eb, el, UTIL_ZIP_NOMEM, "%s: out of memory", name);
    int k = 0, rc = 0;
    size_t p = cd_off, total = 0;
    for (unsigned i = 0; i < entries && !rc; i++) {
        if (p + 46 > (size_t)cd_off + cd_size || le32(b + p) != 0x02014b50) {
            rc = util_errf(eb, el, UTIL_ZIP_FORMAT, "%s: zip central directory entry %u is corrupt",
                           name, i);
            break;
        }
        unsigned flags = le16(b + p + 8), method = le16(b + p + 10);
        uint32_t crc = le32(b + p + 16), csize = le32(b + p + 20), usize = le32(b + p + 24);
        unsigned nlen = le16(b + p + 28), xlen = le16(b + p + 30), clen = le16(b + p + 32);
        uint32_t loff = le32(b + p + 42);
        if (p + 46 + nlen + xlen + clen > (size_t)cd_off + cd_size) {
            rc = util_errf(eb, el, UTIL_ZIP_FORMAT, "%s: zip central directory entry %u runs past it",
                           name, i);
            break;
        }
        char *ename = strndup((const char *)b + p + 46, nlen);
        p += 46 + nlen + xlen + clen;
        if (!ename) {
            rc = util_errf(eb, el, UTIL_ZIP_NOMEM, "%s: out of memory", name);
            break;
        }
        if (!wanted(ename)) {
            free(ename);
            continue;
        }
        e[k].name = ename;
        if (flags & 1)
            rc = util_errf(eb, el, UTIL_ZIP_UNSUPPORTED, "%s: %s is encrypted", name, ename);
        else if (method != 0 && method != 8)
            rc = util_errf(eb, el, UTIL_ZIP_UNSUPPORTED, "%s: %s is compressed with method %u (only "
                           "stored and deflate are read)", name, ename, method);
        else if (csize == 0xffffffffu || usize == 0xffffffffu || loff == 0xffffffffu)
            rc = util_errf(eb, el, UTIL_ZIP_UNSUPPORTED, "%s: %s needs ZIP64 (not supported)", name,
                           ename);
        else if (method == 0 && csize != usize)
            rc = util_errf(eb, el, UTIL_ZIP_FORMAT, "%s: %s is stored with two sizes", name, ename);
        else if (method == 8 && (uint64_t)usize > (uint64_t)csize * 1032 + 64)
            /* deflate cannot expand past about 1032:1: a larger claim is a lie,
             * and must not size an allocation */
            rc = util_errf(eb, el, UTIL_ZIP_FORMAT, "%s: %s claims %u bytes from %u compressed: "
                           "corrupt", name, ename, (unsigned)usize, (unsigned)csize);
        else if (usize > max_total - total)
            rc = util_errf(eb, el, UTIL_ZIP_TOOBIG, "%s: the entries inflate to more than %zu bytes",
                           name, max_total);
        if (rc)
            break;
        total += usize;
        /* the local header: its own name and extra lengths */
        if ((size_t)loff + 30 > n || le32(b + loff) != 0x04034b50) {
            rc = util_errf(eb, el, UTIL_ZIP_FORMAT, "%s: %s: its local header is missing or corrupt",
                           name, ename);
            break;
        }
        size_t data = (size_t)loff + 30 + le16(b + loff + 26) + le16(b + loff + 28);
        if (data > n || csize > n - data) {
            rc = util_errf(eb, el, UTIL_ZIP_FORMAT, "%s: %s runs past the end of the zip: truncated",
                           name, ename);
            break;
        }
        unsigned char *o = malloc(usize ? usize : 1);
        if (!o) {
            rc = util_errf(eb, el, UTIL_ZIP_NOMEM, "%s: out of memory", name);
            break;
        }
        e[k].data = o;
        e[k].len = usize;
        k++;
        if (method == 0) {
            memcpy(o, b + data, usize);
        } else {
            z_stream z;
            memset(&z, 0, sizeof z);
            if (inflateInit2(&z, -15) != Z_OK) {
                rc = util_errf(eb, el, UTIL_ZIP_NOMEM, "%s: out of memory", name);
                break;
            }
            z.next_in = (unsigned char *)(uintptr_t)(b + data);
            z.avail_in = csize;
            z.next_out = o;
            z.avail_out = usize;
            int zr = inflate(&z, Z_FINISH);
            size_t got = usize - z.avail_out;
            inflateEnd(&z);
            if (zr != Z_STREAM_END || got != usize) {
                rc = util_errf(eb, el, UTIL_ZIP_FORMAT, "%s: %s does not inflate to its %u bytes: "
                               "corrupt or truncated", name, ename, (unsigned)usize);
                break;
            }
        }
        if ((uint32_t)crc32(0L, o, usize) != crc) {
            rc = util_errf(eb, el, UTIL_ZIP_FORMAT, "%s: %s fails its CRC-32: corrupt", name, ename);
            break;
        }
    }
    if (!rc && k == 0)
        rc = util_errf(eb, el, UTIL_ZIP_FORMAT, "%s: the zip holds no files", name);
    if (rc) {
        /* the entry being read when it failed holds its name: free it too */
        int m = k < (int)entries && e[k].name ? k + 1 : k;
        util_zip_free(e, m);
        return rc;
    }
    *out = e;
    *count = k;
    return 0;
}
