/* safetensors.c - the safetensors weight reader and writer.
 *
 * Layout (github.com/huggingface/safetensors, "Format"):
 *
 *   N (u64 little-endian) | header: N bytes of UTF-8 JSON | data
 *
 * The header maps each tensor name to
 *   {"dtype": "F32", "shape": [768, 768], "data_offsets": [begin, end]}
 * with offsets relative to the start of data, plus an optional
 * "__metadata__" object of string values.  Writers pad the header with
 * spaces so that 8 + N is a multiple of 8.
 *
 * The file is untrusted input.  enc_st_open checks every field before any
 * tensor is handed out: the header length, UTF-8, the JSON, each entry's
 * dtype, shape and offsets, byte counts against shapes, ranges inside the
 * data, no two ranges overlapping, no name twice.  After that, enc_st_get
 * only has to compare shapes and convert.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "encoder/safetensors.h"

/* safetensors data are little-endian and are handed out (F32) or converted
 * with plain memcpy, which is only right on a little-endian host. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "encoder/safetensors.c assumes a little-endian host"
#endif

/* ---- messages ------------------------------------------------------------------ */

#if defined(__GNUC__)
#define ST__PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define ST__PRINTF(f, a)
#endif

/* Formats "PATH: reason" into errbuf (which may be NULL) and returns code. */
ST__PRINTF(5, 6)
static int st_fail(char *errbuf, size_t errlen, int code, const char *path, const char *fmt, ...)
{
    if (errbuf == NULL || errlen == 0)
        return code;
    int n = snprintf(errbuf, errlen, "%s: ", path ? path : "(null)");
    if (n < 0 || (size_t)n >= errlen)
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return code;
}

static int errno_to_enc(int e)
{
    return e == ENOMEM ? ENC_NOMEM : ENC_IO;
}

/* A name from the file, fit for a message: control characters (which JSON
 * escapes can produce) become '?', and very long names are cut with "...". */
typedef struct st_qname {
    char s[160];
} st_qname;

static st_qname qname(const char *name)
{
    st_qname q;
    size_t j = 0, cap = sizeof q.s;
    for (size_t i = 0; name[i] != '\0'; i++) {
        if (j + 4 >= cap) {
            memcpy(q.s + j, "...", 3);
            j += 3;
            break;
        }
        unsigned char c = (unsigned char)name[i];
        q.s[j++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    q.s[j] = '\0';
    return q;
}

/* "[768, 3]", "[]" for a scalar; cut with "..." if it does not fit. */
typedef struct st_shape_str {
    char s[8 * 22 + 8];
} st_shape_str;

static st_shape_str shape_str(int rank, const int64_t *shape)
{
    st_shape_str o;
    size_t j = 0;
    o.s[j++] = '[';
    for (int i = 0; i < rank; i++) {
        int n = snprintf(o.s + j, sizeof o.s - j, "%s%lld", i ? ", " : "", (long long)shape[i]);
        if (n < 0 || (size_t)n >= sizeof o.s - j - 1) {
            j = sizeof o.s - 5;
            memcpy(o.s + j, "...", 3);
            j += 3;
            break;
        }
        j += (size_t)n;
    }
    o.s[j++] = ']';
    o.s[j] = '\0';
    return o;
}

static const char *json_kind(const cJSON *v)
{
    if (cJSON_IsString(v))
        return "a string";
    if (cJSON_IsNumber(v))
        return "a number";
    if (cJSON_IsBool(v))
        return "a boolean";
    if (cJSON_IsNull(v))
        return "null";
    if (cJSON_IsArray(v))
        return "an array";
    if (cJSON_IsObject(v))
        return "an object";
    return "something else";
}

/* ---- dtypes ---------------------------------------------------------------------- */

/* Every dtype the format defines, with its element size in bits.  Only the
 * first three can be read; the others are recognised so that their sizes
 * can still be checked and a lookup can say what the tensor is. */
static const struct {
    const char *name;
    int code;
    unsigned bits;
} st_dtypes[] = {
    {"F32", ENC_ST_F32, 32},      {"F16", ENC_ST_F16, 16},      {"BF16", ENC_ST_BF16, 16},
    {"F64", ENC_ST_OTHER, 64},    {"I64", ENC_ST_OTHER, 64},    {"U64", ENC_ST_OTHER, 64},
    {"I32", ENC_ST_OTHER, 32},    {"U32", ENC_ST_OTHER, 32},    {"I16", ENC_ST_OTHER, 16},
    {"U16", ENC_ST_OTHER, 16},    {"I8", ENC_ST_OTHER, 8},      {"U8", ENC_ST_OTHER, 8},
    {"BOOL", ENC_ST_OTHER, 8},    {"F8_E5M2", ENC_ST_OTHER, 8}, {"F8_E4M3", ENC_ST_OTHER, 8},
    {"F8_E8M0", ENC_ST_OTHER, 8}, {"C64", ENC_ST_OTHER, 64},    {"F6_E2M3", ENC_ST_OTHER, 6},
    {"F6_E3M2", ENC_ST_OTHER, 6}, {"F4", ENC_ST_OTHER, 4},
};

/* Finds dtype name; *bits is 0 for a name this table does not know (a
 * newer format revision), whose byte count then cannot be checked. */
static int dtype_lookup(const char *name, unsigned *bits)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(name, st_dtypes[i].name) == 0) {
            *bits = st_dtypes[i].bits;
            return st_dtypes[i].code;
        }
    *bits = 0;
    return ENC_ST_OTHER;
}

/* IEEE binary16 -> binary32, exact.  Normal halves re-bias the exponent
 * (15 -> 127); subnormal halves are man * 2^-24, which a float holds
 * exactly, so the multiplication does the normalising; inf and NaN keep
 * sign and payload. */
static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0) {
        float f = (float)man * 5.9604644775390625e-8f; /* 2^-24 */
        return sign ? -f : f;
    }
    if (exp == 0x1f)
        bits = sign | 0x7f800000u | (man << 13);
    else
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* bfloat16 is the top half of a binary32. */
static float bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* ---- the open file ------------------------------------------------------------------ */

typedef struct st_tensor {
    const char *name;  /* NUL-terminated, in enc_st.strings */
    const char *dtype; /* as the file spells it, in enc_st.strings */
    int code;          /* ENC_ST_* */
    int rank;
    int64_t shape[ENC_ST_MAX_RANK];
    size_t nelem;
    size_t begin, end; /* byte range relative to enc_st.data */
    float *copy;       /* converted values once enc_st_get made them */
} st_tensor;

struct enc_st {
    char *path;                /* for messages */
    void *map;                 /* the whole file, read-only */
    size_t maplen;
    const unsigned char *data; /* after the header */
    size_t datalen;
    size_t n;
    st_tensor *t;              /* n tensors sorted by name (strcmp) */
    char *strings;             /* all names and dtypes, one allocation */
};

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_by_begin(const void *a, const void *b)
{
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

static int cmp_key_name(const void *key, const void *elem)
{
    return strcmp((const char *)key, ((const st_tensor *)elem)->name);
}

static st_tensor *find(const enc_st *st, const char *name)
{
    if (st->n == 0)
        return NULL;
    return bsearch(name, st->t, st->n, sizeof st->t[0], cmp_key_name);
}

/* ---- header checks --------------------------------------------------------------------- */

/* Length of the well-formed multi-byte UTF-8 sequence at s (n bytes left),
 * or 0: the lead byte fixes the length and the smallest code point that
 * length may carry (no overlong forms), and surrogates and code points past
 * U+10FFFF are out. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp, min;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2, cp = s[0] & 0x1fu, min = 0x80;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3, cp = s[0] & 0x0fu, min = 0x800;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4, cp = s[0] & 0x07u, min = 0x10000;
    else
        return 0;
    if (n < len)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[k] & 0xc0u) != 0x80u)
            return 0;
        cp = cp << 6 | (s[k] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static int utf8_valid(const char *str)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t n = strlen(str);
    for (size_t i = 0; i < n;) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        size_t len = utf8_seq(s + i, n - i);
        if (len == 0)
            return 0;
        i += len;
    }
    return 1;
}

/* The header must be UTF-8 (as the format says) without raw control
 * characters other than JSON whitespace, and no string may contain the
 * escape \u0000: cJSON would decode it into a NUL that silently cuts a
 * name short, letting two different names collide.  Returns the offset of
 * the first offending byte and what is wrong, or -1 when all is well. */
static long header_text_check(const unsigned char *h, size_t n, const char **why)
{
    int in_str = 0;
    size_t i = 0;
    while (i < n) {
        unsigned char c = h[i];
        if (c < 0x80) {
            if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
                *why = "a control character";
                return (long)i;
            }
            if (c == '"') {
                in_str = !in_str;
            } else if (c == '\\' && in_str && i + 1 < n) {
                if (h[i + 1] == 'u' && i + 5 < n && memcmp(h + i + 2, "0000", 4) == 0) {
                    *why = "the escape \\u0000";
                    return (long)i;
                }
                /* An escaped quote or backslash neither ends the string nor
                 * escapes what follows; any other byte is checked as usual. */
                if (h[i + 1] == '"' || h[i + 1] == '\\')
                    i++;
            }
            i++;
            continue;
        }
        size_t len = utf8_seq(h + i, n - i);
        if (len == 0) {
            *why = "invalid UTF-8";
            return (long)i;
        }
        i += len;
    }
    return -1;
}

/* 2^53: beyond it a JSON number (a double in cJSON) no longer holds every
 * integer, so a value there cannot be trusted to be the one written. */
#define ST_MAX_EXACT 9007199254740992.0

/* A non-negative integer that a double represents exactly. */
static int json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_EXACT) || floor(d) != d)
        return 0;
    *out = (uint64_t)d;
    return 1;
}

/* Describes a rejected number or value for a message: "-3", "1.5", "a string". */
typedef struct st_val_str {
    char s[48];
} st_val_str;

static st_val_str val_str(const cJSON *v)
{
    st_val_str o;
    if (cJSON_IsNumber(v))
        snprintf(o.s, sizeof o.s, "%.17g", v->valuedouble);
    else
        snprintf(o.s, sizeof o.s, "%s", json_kind(v));
    return o;
}

typedef struct st_ctx {
    const char *path;
    char *errbuf;
    size_t errlen;
    size_t datalen;
} st_ctx;

static int check_metadata(const st_ctx *c, const cJSON *m)
{
    if (!cJSON_IsObject(m))
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, c->path,
                       "'__metadata__' is %s, not an object of strings", json_kind(m));
    for (const cJSON *kv = m->child; kv != NULL; kv = kv->next)
        if (!cJSON_IsString(kv))
            return st_fail(c->errbuf, c->errlen, ENC_FORMAT, c->path,
                           "'__metadata__': value of '%s' is %s, not a string",
                           qname(kv->string).s, json_kind(kv));
    return ENC_OK;
}

/* Checks one header entry and fills *t (name and dtype still point into
 * the cJSON tree). */
static int check_entry(const st_ctx *c, const cJSON *e, st_tensor *t)
{
    const char *path = c->path;
    st_qname qs = qname(e->string);
    const char *qn = qs.s;

    memset(t, 0, sizeof *t);
    t->name = e->string;
    if (!cJSON_IsObject(e))
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                       "tensor '%s': entry is %s, not an object", qn, json_kind(e));

    /* dtype */
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (dt == NULL)
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path, "tensor '%s': missing 'dtype'",
                       qn);
    if (!cJSON_IsString(dt))
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                       "tensor '%s': 'dtype' is %s, not a string", qn, json_kind(dt));
    unsigned bits;
    t->dtype = dt->valuestring;
    t->code = dtype_lookup(dt->valuestring, &bits);

    /* shape */
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
    if (sh == NULL)
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path, "tensor '%s': missing 'shape'",
                       qn);
    if (!cJSON_IsArray(sh))
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                       "tensor '%s': 'shape' is %s, not an array", qn, json_kind(sh));
    int rank = cJSON_GetArraySize(sh);
    if (rank > ENC_ST_MAX_RANK)
        return st_fail(c->errbuf, c->errlen, ENC_UNSUPPORTED, path,
                       "tensor '%s': 'shape' has %d dimensions; at most %d are supported", qn,
                       rank, ENC_ST_MAX_RANK);
    t->rank = rank;
    int has_zero = 0;
    int i = 0;
    for (const cJSON *d = sh->child; d != NULL; d = d->next, i++) {
        uint64_t v;
        if (!json_uint(d, &v))
            return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                           "tensor '%s': 'shape'[%d] is %s, not a non-negative integer", qn, i,
                           val_str(d).s);
        t->shape[i] = (int64_t)v;
        has_zero |= v == 0;
    }
    /* The element count must fit in size_t, and so must the byte count
     * (F6 and F4 pack elements below a byte: their bytes are the bits
     * rounded up). */
    uint64_t nelem = 1;
    if (has_zero) {
        nelem = 0;
    } else {
        for (i = 0; i < rank; i++) {
            uint64_t d = (uint64_t)t->shape[i];
            if (nelem > SIZE_MAX / d)
                return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                               "tensor '%s': 'shape' %s has too many elements", qn,
                               shape_str(rank, t->shape).s);
            nelem *= d;
        }
    }
    if (bits != 0 && nelem > SIZE_MAX / bits)
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                       "tensor '%s': 'shape' %s has too many elements", qn,
                       shape_str(rank, t->shape).s);
    t->nelem = (size_t)nelem;

    /* data_offsets */
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (off == NULL)
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                       "tensor '%s': missing 'data_offsets'", qn);
    if (!cJSON_IsArray(off))
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                       "tensor '%s': 'data_offsets' is %s, not [begin, end]", qn,
                       json_kind(off));
    if (cJSON_GetArraySize(off) != 2)
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                       "tensor '%s': 'data_offsets' has length %d, not 2 ([begin, end])", qn,
                       cJSON_GetArraySize(off));
    uint64_t be[2];
    for (i = 0; i < 2; i++) {
        const cJSON *v = cJSON_GetArrayItem(off, i);
        if (!json_uint(v, &be[i]))
            return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                           "tensor '%s': 'data_offsets'[%d] is %s, not a non-negative integer",
                           qn, i, val_str(v).s);
    }
    if (be[0] > be[1])
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                       "tensor '%s': 'data_offsets' [%llu, %llu] end before they begin", qn,
                       (unsigned long long)be[0], (unsigned long long)be[1]);
    if (be[1] > c->datalen)
        return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                       "tensor '%s': 'data_offsets' [%llu, %llu] run past the end of the data "
                       "(%zu bytes)",
                       qn, (unsigned long long)be[0], (unsigned long long)be[1], c->datalen);
    t->begin = (size_t)be[0];
    t->end = (size_t)be[1];
    if (bits != 0) {
        size_t need = (size_t)(nelem / 8 * bits + ((nelem % 8) * bits + 7) / 8);
        if (t->end - t->begin != need)
            return st_fail(c->errbuf, c->errlen, ENC_FORMAT, path,
                           "tensor '%s': data_offsets [%zu, %zu] do not match shape %s of %s "
                           "(%zu bytes)",
                           qn, t->begin, t->end, shape_str(rank, t->shape).s,
                           qname(t->dtype).s, need);
    }
    return ENC_OK;
}

/* Parses and checks the header; on success st->n, st->t and st->strings are
 * set and sorted by name. */
static int parse_header(enc_st *st, const unsigned char *hdr, size_t hlen, char *errbuf,
                        size_t errlen)
{
    const char *path = st->path;
    st_ctx c = {path, errbuf, errlen, st->datalen};

    const char *why;
    long bad = header_text_check(hdr, hlen, &why);
    if (bad >= 0)
        return st_fail(errbuf, errlen, ENC_FORMAT, path, "header has %s at byte %ld", why, bad);

    /* A NUL-terminated copy for cJSON (the header has no NUL byte now), which
     * keeps us on cJSON_ParseWithOpts, older than ParseWithLength. */
    char *text = malloc(hlen + 1);
    if (text == NULL)
        return st_fail(errbuf, errlen, ENC_NOMEM, path, "out of memory (header of %zu bytes)",
                       hlen);
    memcpy(text, hdr, hlen);
    text[hlen] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithOpts(text, &end, 0);
    if (root == NULL) {
        long at = end ? (long)(end - text) : 0;
        free(text);
        return st_fail(errbuf, errlen, ENC_FORMAT, path,
                       "header is not valid JSON (error near byte %ld of %zu)", at, hlen);
    }
    /* Only the space padding may follow the object. */
    for (const char *p = end; *p != '\0'; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            long at = (long)(p - text);
            free(text);
            cJSON_Delete(root);
            return st_fail(errbuf, errlen, ENC_FORMAT, path,
                           "header: unexpected bytes after the JSON value at byte %ld", at);
        }
    free(text);
    if (!cJSON_IsObject(root)) {
        int rc = st_fail(errbuf, errlen, ENC_FORMAT, path, "header is %s, not a JSON object",
                         json_kind(root));
        cJSON_Delete(root);
        return rc;
    }

    int rc = ENC_OK;
    size_t n = 0, strbytes = 0;
    for (const cJSON *e = root->child; e != NULL; e = e->next)
        if (strcmp(e->string, "__metadata__") != 0)
            n++;
    st_tensor *t = calloc(n ? n : 1, sizeof *t);
    if (t == NULL) {
        cJSON_Delete(root);
        return st_fail(errbuf, errlen, ENC_NOMEM, path, "out of memory (%zu tensors)", n);
    }
    size_t k = 0;
    for (const cJSON *e = root->child; e != NULL && rc == ENC_OK; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            rc = check_metadata(&c, e);
            continue;
        }
        rc = check_entry(&c, e, &t[k]);
        if (rc == ENC_OK)
            strbytes += strlen(t[k].name) + 1 + strlen(t[k].dtype) + 1;
        k++;
    }
    char *strings = NULL;
    if (rc == ENC_OK) {
        strings = malloc(strbytes ? strbytes : 1);
        if (strings == NULL)
            rc = st_fail(errbuf, errlen, ENC_NOMEM, path, "out of memory");
    }
    if (rc != ENC_OK) {
        free(t);
        cJSON_Delete(root);
        return rc;
    }
    /* Move the strings out of the tree so it can go. */
    char *p = strings;
    for (size_t i = 0; i < n; i++) {
        size_t a = strlen(t[i].name) + 1, b = strlen(t[i].dtype) + 1;
        memcpy(p, t[i].name, a);
        t[i].name = p;
        p += a;
        memcpy(p, t[i].dtype, b);
        t[i].dtype = p;
        p += b;
    }
    cJSON_Delete(root);
    st->t = t;
    st->n = n;
    st->strings = strings;

    if (n > 1)
        qsort(t, n, sizeof *t, cmp_by_name);
    for (size_t i = 1; i < n; i++)
        if (strcmp(t[i - 1].name, t[i].name) == 0)
            return st_fail(errbuf, errlen, ENC_FORMAT, path,
                           "tensor '%s' appears more than once in the header",
                           qname(t[i].name).s);

    /* Overlap: sort the non-empty ranges by start; each must begin at or
     * after the end of the one before.  Empty tensors own no bytes. */
    st_tensor **by = malloc((n ? n : 1) * sizeof *by);
    if (by == NULL)
        return st_fail(errbuf, errlen, ENC_NOMEM, path, "out of memory");
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (t[i].end > t[i].begin)
            by[m++] = &t[i];
    if (m > 1)
        qsort(by, m, sizeof *by, cmp_by_begin);
    for (size_t i = 1; i < m && rc == ENC_OK; i++)
        if (by[i]->begin < by[i - 1]->end) {
            char other[sizeof(st_qname)];
            snprintf(other, sizeof other, "%s", qname(by[i - 1]->name).s);
            rc = st_fail(errbuf, errlen, ENC_FORMAT, path,
                         "tensor '%s': data_offsets [%zu, %zu] overlap those of tensor '%s' "
                         "[%zu, %zu]",
                         qname(by[i]->name).s, by[i]->begin, by[i]->end, other,
                         by[i - 1]->begin, by[i - 1]->end);
        }
    free(by);
    /* Holes between tensors are allowed: they cost nothing to skip, and
     * rejecting them (as the reference reader does) would add no safety. */
    return rc;
}

static void st_free(enc_st *st)
{
    if (st == NULL)
        return;
    for (size_t i = 0; i < st->n; i++)
        free(st->t[i].copy);
    free(st->t);
    free(st->strings);
    if (st->map != NULL)
        munmap(st->map, st->maplen);
    free(st->path);
    free(st);
}

/* Checks the preamble and the header of the mapped file. */
static int st_check(enc_st *st, char *errbuf, size_t errlen)
{
    const char *path = st->path;
    const unsigned char *b = st->map;
    size_t size = st->maplen;
    if (size == 0)
        return st_fail(errbuf, errlen, ENC_FORMAT, path, "empty file, not a safetensors file");
    if (size < 8)
        return st_fail(errbuf, errlen, ENC_FORMAT, path,
                       "file is %zu bytes, too short for the 8-byte header length", size);
    uint64_t hlen;
    memcpy(&hlen, b, 8);
    if (hlen > ENC_ST_MAX_HEADER)
        return st_fail(errbuf, errlen, ENC_TOOBIG, path,
                       "header length %llu exceeds the limit of %u bytes (not a safetensors "
                       "file?)",
                       (unsigned long long)hlen, ENC_ST_MAX_HEADER);
    if (hlen > size - 8)
        return st_fail(errbuf, errlen, ENC_FORMAT, path,
                       "header length %llu runs past the end of the file (%zu bytes)",
                       (unsigned long long)hlen, size);
    st->data = b + 8 + hlen;
    st->datalen = size - 8 - (size_t)hlen;
    return parse_header(st, b + 8, (size_t)hlen, errbuf, errlen);
}

int enc_st_open(const char *path, enc_st **out, char *errbuf, size_t errlen)
{
    if (path == NULL || out == NULL)
        return st_fail(errbuf, errlen, ENC_INVAL, path, "invalid argument");

    enc_st *st = calloc(1, sizeof *st);
    if (st == NULL || (st->path = strdup(path)) == NULL) {
        free(st);
        return st_fail(errbuf, errlen, ENC_NOMEM, path, "out of memory");
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        st_free(st);
        return st_fail(errbuf, errlen, errno_to_enc(e), path, "%s", strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        st_free(st);
        return st_fail(errbuf, errlen, errno_to_enc(e), path, "%s", strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        st_free(st);
        return st_fail(errbuf, errlen, ENC_IO, path, "not a regular file");
    }
    if ((uintmax_t)sb.st_size > SIZE_MAX) {
        close(fd);
        st_free(st);
        return st_fail(errbuf, errlen, ENC_TOOBIG, path, "file too large to map");
    }
    st->maplen = (size_t)sb.st_size;
    if (st->maplen > 0) {
        void *map = mmap(NULL, st->maplen, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            st_free(st);
            return st_fail(errbuf, errlen, errno_to_enc(e), path, "mmap: %s", strerror(e));
        }
        st->map = map;
    }
    close(fd); /* the mapping keeps the file */

    int rc = st_check(st, errbuf, errlen);
    if (rc != ENC_OK) {
        st_free(st);
        return rc;
    }
    *out = st;
    return ENC_OK;
}

void enc_st_close(enc_st *st)
{
    st_free(st);
}

size_t enc_st_count(const enc_st *st)
{
    assert(st != NULL);
    return st->n;
}

const char *enc_st_name(const enc_st *st, size_t i)
{
    assert(st != NULL && i < st->n);
    return st->t[i].name;
}

int enc_st_info_get(const enc_st *st, const char *name, enc_st_info *out)
{
    assert(st != NULL && name != NULL && out != NULL);
    const st_tensor *t = find(st, name);
    if (t == NULL)
        return ENC_MISSING;
    memset(out, 0, sizeof *out);
    out->dtype = t->code;
    out->rank = t->rank;
    memcpy(out->shape, t->shape, sizeof out->shape);
    out->nelem = t->nelem;
    return ENC_OK;
}

int enc_st_get(enc_st *st, const char *name, int rank, const int64_t *shape,
               const float **data, char *errbuf, size_t errlen)
{
    assert(st != NULL && data != NULL);
    if (name == NULL || rank < 0 || rank > ENC_ST_MAX_RANK || (rank > 0 && shape == NULL))
        return st_fail(errbuf, errlen, ENC_INVAL, st->path,
                       "enc_st_get: invalid argument (rank %d)", rank);
    st_tensor *t = find(st, name);
    if (t == NULL)
        return st_fail(errbuf, errlen, ENC_MISSING, st->path, "tensor '%s' is missing", name);
    if (t->code == ENC_ST_OTHER)
        return st_fail(errbuf, errlen, ENC_UNSUPPORTED, st->path,
                       "tensor '%s' has unsupported dtype %s (F32, F16 and BF16 can be read)",
                       name, qname(t->dtype).s);
    int same = t->rank == rank;
    for (int i = 0; same && i < rank; i++)
        same = t->shape[i] == shape[i];
    if (!same) {
        char want[sizeof(st_shape_str)];
        snprintf(want, sizeof want, "%s", shape_str(rank, shape).s);
        return st_fail(errbuf, errlen, ENC_SHAPE, st->path,
                       "tensor '%s' has shape %s but the configuration implies %s", name,
                       shape_str(t->rank, t->shape).s, want);
    }

    const unsigned char *src = st->data + t->begin;
    if (t->copy != NULL) {
        *data = t->copy;
        return ENC_OK;
    }
    /* Empty tensors and aligned F32 are used in place; the pointer of an
     * empty one is never read through. */
    if (t->nelem == 0 || (t->code == ENC_ST_F32 && (uintptr_t)src % sizeof(float) == 0)) {
        *data = (const float *)(const void *)src;
        return ENC_OK;
    }
    float *dst = malloc(t->nelem * sizeof *dst);
    if (dst == NULL)
        return st_fail(errbuf, errlen, ENC_NOMEM, st->path,
                       "out of memory converting tensor '%s' (%zu values)", name, t->nelem);
    if (t->code == ENC_ST_F32) {
        memcpy(dst, src, t->nelem * sizeof *dst);
    } else {
        float (*conv)(uint16_t) = t->code == ENC_ST_F16 ? f16_to_f32 : bf16_to_f32;
        for (size_t i = 0; i < t->nelem; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, sizeof h);
            dst[i] = conv(h);
        }
    }
    t->copy = dst;
    *data = dst;
    return ENC_OK;
}

/* ---- writing ---------------------------------------------------------------------------- */

typedef struct st_buf {
    char *p;
    size_t n, cap;
    int oom;
} st_buf;

static void buf_put(st_buf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (n > SIZE_MAX / 2 - b->n) {
        b->oom = 1;
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (q == NULL) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void buf_str(st_buf *b, const char *s)
{
    buf_put(b, s, strlen(s));
}

/* A JSON string literal: quotes, backslashes and control characters are
 * escaped; other bytes (UTF-8) go through. */
static void buf_json_string(st_buf *b, const char *s)
{
    buf_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char esc[8];
        if (*p == '"' || *p == '\\') {
            esc[0] = '\\';
            esc[1] = (char)*p;
            buf_put(b, esc, 2);
        } else if (*p < 0x20) {
            snprintf(esc, sizeof esc, "\\u%04x", *p);
            buf_put(b, esc, 6);
        } else {
            buf_put(b, (const char *)p, 1);
        }
    }
    buf_put(b, "\"", 1);
}

static int write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Checks the arguments of enc_st_write and sums the bytes of each tensor. */
static int write_check(const char *path, size_t n, const char *const *names, const int *ranks,
                       const int64_t (*shapes)[ENC_ST_MAX_RANK], const float *const *data,
                       size_t *bytes, char *errbuf, size_t errlen)
{
    if (n > 0 && (names == NULL || ranks == NULL || shapes == NULL || data == NULL))
        return st_fail(errbuf, errlen, ENC_INVAL, path, "invalid argument");
    for (size_t i = 0; i < n; i++) {
        if (names[i] == NULL || names[i][0] == '\0')
            return st_fail(errbuf, errlen, ENC_INVAL, path, "tensor %zu has no name", i);
        if (!utf8_valid(names[i]))
            return st_fail(errbuf, errlen, ENC_INVAL, path, "tensor %zu: name is not UTF-8", i);
        if (strcmp(names[i], "__metadata__") == 0)
            return st_fail(errbuf, errlen, ENC_INVAL, path,
                           "'__metadata__' is reserved and cannot name a tensor");
        if (ranks[i] < 0 || ranks[i] > ENC_ST_MAX_RANK)
            return st_fail(errbuf, errlen, ENC_INVAL, path,
                           "tensor '%s': rank %d is out of range (0..%d)", qname(names[i]).s,
                           ranks[i], ENC_ST_MAX_RANK);
        size_t nelem = 1;
        int zero = 0;
        for (int d = 0; d < ranks[i]; d++) {
            if (shapes[i][d] < 0)
                return st_fail(errbuf, errlen, ENC_INVAL, path,
                               "tensor '%s': dimension %d is negative (%lld)",
                               qname(names[i]).s, d, (long long)shapes[i][d]);
            zero |= shapes[i][d] == 0;
        }
        for (int d = 0; !zero && d < ranks[i]; d++) {
            uint64_t v = (uint64_t)shapes[i][d];
            if (v > SIZE_MAX / sizeof(float) / nelem)
                return st_fail(errbuf, errlen, ENC_INVAL, path,
                               "tensor '%s': shape %s is too large", qname(names[i]).s,
                               shape_str(ranks[i], shapes[i]).s);
            nelem *= (size_t)v;
        }
        if (zero)
            nelem = 0;
        if (nelem > 0 && data[i] == NULL)
            return st_fail(errbuf, errlen, ENC_INVAL, path, "tensor '%s': no data",
                           qname(names[i]).s);
        bytes[i] = nelem * sizeof(float);
    }
    if (n > 1) {
        const char **sorted = malloc(n * sizeof *sorted);
        if (sorted == NULL)
            return st_fail(errbuf, errlen, ENC_NOMEM, path, "out of memory");
        memcpy(sorted, names, n * sizeof *sorted);
        qsort(sorted, n, sizeof *sorted, cmp_str_ptr);
        int rc = ENC_OK;
        for (size_t i = 1; i < n && rc == ENC_OK; i++)
            if (strcmp(sorted[i - 1], sorted[i]) == 0)
                rc = st_fail(errbuf, errlen, ENC_INVAL, path, "tensor '%s' is given twice",
                             qname(sorted[i]).s);
        free(sorted);
        if (rc != ENC_OK)
            return rc;
    }
    return ENC_OK;
}

/* The header: metadata, then each tensor in order at consecutive offsets,
 * padded with spaces to a multiple of 8 bytes. */
static int build_header(st_buf *b, size_t n, const char *const *names, const int *ranks,
                        const int64_t (*shapes)[ENC_ST_MAX_RANK], const size_t *bytes)
{
    char num[64];
    size_t off = 0;
    buf_str(b, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        buf_str(b, ",");
        buf_json_string(b, names[i]);
        buf_str(b, ":{\"dtype\":\"F32\",\"shape\":[");
        for (int d = 0; d < ranks[i]; d++) {
            snprintf(num, sizeof num, "%s%lld", d ? "," : "", (long long)shapes[i][d]);
            buf_str(b, num);
        }
        if (bytes[i] > SIZE_MAX - off)
            return ENC_INVAL;
        snprintf(num, sizeof num, "],\"data_offsets\":[%zu,%zu]}", off, off + bytes[i]);
        buf_str(b, num);
        off += bytes[i];
    }
    buf_str(b, "}");
    while (!b->oom && b->n % 8 != 0)
        buf_str(b, " ");
    return b->oom ? ENC_NOMEM : ENC_OK;
}

/* fsync the directory holding path so the rename survives a crash.  Some
 * file systems refuse fsync on a directory (EINVAL); that is fine there. */
static int sync_parent(const char *path, char *errbuf, size_t errlen)
{
    char *dir = strdup(path);
    if (dir == NULL)
        return st_fail(errbuf, errlen, ENC_NOMEM, path, "out of memory");
    char *slash = strrchr(dir, '/');
    const char *dname = ".";
    if (slash == dir)
        dname = "/";
    else if (slash != NULL) {
        *slash = '\0';
        dname = dir;
    }
    int rc = ENC_OK;
    int dfd = open(dname, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        if (fsync(dfd) != 0 && errno != EINVAL && errno != EROFS) {
            int e = errno;
            rc = st_fail(errbuf, errlen, errno_to_enc(e), path, "fsync of directory: %s",
                         strerror(e));
        }
        close(dfd);
    }
    free(dir);
    return rc;
}

int enc_st_write(const char *path, size_t n, const char *const *names, const int *ranks,
                 const int64_t (*shapes)[ENC_ST_MAX_RANK], const float *const *data,
                 char *errbuf, size_t errlen)
{
    if (path == NULL)
        return st_fail(errbuf, errlen, ENC_INVAL, path, "invalid argument");
    size_t *bytes = malloc((n ? n : 1) * sizeof *bytes);
    if (bytes == NULL)
        return st_fail(errbuf, errlen, ENC_NOMEM, path, "out of memory");
    int rc = write_check(path, n, names, ranks, shapes, data, bytes, errbuf, errlen);
    if (rc != ENC_OK) {
        free(bytes);
        return rc;
    }
    st_buf hb = {0};
    rc = build_header(&hb, n, names, ranks, shapes, bytes);
    if (rc != ENC_OK) {
        free(hb.p);
        free(bytes);
        return st_fail(errbuf, errlen, rc, path, "%s",
                       rc == ENC_NOMEM ? "out of memory building the header"
                                       : "tensors too large in total");
    }
    if (hb.n > ENC_ST_MAX_HEADER) {
        free(hb.p);
        free(bytes);
        return st_fail(errbuf, errlen, ENC_TOOBIG, path,
                       "header of %zu bytes exceeds the limit of %u", hb.n, ENC_ST_MAX_HEADER);
    }

    size_t plen = strlen(path);
    char *tmp = malloc(plen + sizeof ".tmp.XXXXXX");
    if (tmp == NULL) {
        free(hb.p);
        free(bytes);
        return st_fail(errbuf, errlen, ENC_NOMEM, path, "out of memory");
    }
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        free(hb.p);
        free(bytes);
        return st_fail(errbuf, errlen, errno_to_enc(e), path, "creating a temporary file: %s",
                       strerror(e));
    }
    /* mkstemp makes 0600; weights are not secret, give them the usual 0644. */
    (void)fchmod(fd, 0644);

    const char *what = "write";
    uint64_t hlen = hb.n;
    int ok = write_all(fd, &hlen, 8) == 0 && write_all(fd, hb.p, hb.n) == 0;
    for (size_t i = 0; ok && i < n; i++)
        if (bytes[i] > 0)
            ok = write_all(fd, data[i], bytes[i]) == 0;
    if (ok) {
        what = "fsync";
        ok = fsync(fd) == 0;
    }
    int e = ok ? 0 : errno;
    if (close(fd) != 0 && ok) {
        e = errno;
        what = "close";
        ok = 0;
    }
    if (ok && rename(tmp, path) != 0) {
        e = errno;
        what = "rename";
        ok = 0;
    }
    if (!ok)
        unlink(tmp);
    free(tmp);
    free(hb.p);
    free(bytes);
    if (!ok)
        return st_fail(errbuf, errlen, errno_to_enc(e), path, "%s: %s", what, strerror(e));
    return sync_parent(path, errbuf, errlen);
}
