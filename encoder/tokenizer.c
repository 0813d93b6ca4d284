/* tokenizer.c - BERT BasicTokenizer + WordPiece, matching HF's slow
 * BertTokenizer id for id (the steps are listed in tokenizer.h).
 *
 * Text is handled one word at a time: a chunk between special tokens is
 * decoded, lower-cased (HF's first, per-character pass), cleaned and cut at
 * white space and CJK ideographs, and each word then goes through NFC, the
 * second lower-casing, accent stripping, punctuation splitting and WordPiece.
 * HF applies NFC to the whole text before cutting it; doing it per word is
 * the same because the spaces left after cleaning are starters that never
 * decompose, reorder or compose (gen_unicode_tables.py asserts this).  Word
 * at a time also lets encoding stop once max_len - 2 tokens are out:
 * truncation keeps a prefix.
 *
 * The vocabulary is the file's bytes, each line NUL-terminated in place,
 * plus an open-addressing hash from token bytes to id.  Nothing is written
 * after enc_tok_load, so sharing between threads needs no locks; encoding
 * state lives in a per-call tok_run.
 */
#include "encoder/internal.h"
#include "encoder/tokenizer.h"

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "encoder/unicode_tables.h"

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

#define MAX_VOCAB_BYTES ((size_t)1 << 30)

/* ---- errors ------------------------------------------------------------------ */

/* ---- UTF-8 --------------------------------------------------------------------- */

/* Offset of the first byte that does not start a well-formed sequence
 * (RFC 3629: no overlongs, no surrogates, nothing past U+10FFFF), or n.
 * This is what Python's strict decoder accepts. */
static size_t utf8_invalid_at(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
        } else {
            return i;
        }
        if (n - i - 1 < need)
            return i;
        for (size_t k = 1; k <= need; k++) {
            unsigned b = s[i + k];
            if ((b & 0xC0) != 0x80)
                return i;
            cp = cp << 6 | (b & 0x3F);
        }
        if (need == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)))
            return i;
        if (need == 3 && (cp < 0x10000 || cp > 0x10FFFF))
            return i;
        i += need + 1;
    }
    return n;
}

/* Decodes the sequence at s[*i], which utf8_invalid_at has accepted. */
static uint32_t utf8_next(const unsigned char *s, size_t *i)
{
    unsigned c = s[*i];
    if (c < 0x80) {
        *i += 1;
        return c;
    }
    size_t need = c >= 0xF0 ? 3 : c >= 0xE0 ? 2 : 1;
    uint32_t cp = c & (0x3F >> need);
    for (size_t k = 1; k <= need; k++)
        cp = cp << 6 | (s[*i + k] & 0x3F);
    *i += need + 1;
    return cp;
}

static size_t utf8_put(uint32_t c, char *out)
{
    if (c < 0x80) {
        out[0] = (char)c;
        return 1;
    }
    if (c < 0x800) {
        out[0] = (char)(0xC0 | c >> 6);
        out[1] = (char)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | c >> 12);
        out[1] = (char)(0x80 | (c >> 6 & 0x3F));
        out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | c >> 18);
    out[1] = (char)(0x80 | (c >> 12 & 0x3F));
    out[2] = (char)(0x80 | (c >> 6 & 0x3F));
    out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

/* ---- Unicode properties ---------------------------------------------------------- */

/* The value of the run containing c in a (start << 8 | value) run table. */
static unsigned run_value(const uint32_t *runs, size_t n, uint32_t c)
{
    size_t lo = 0, hi = n; /* runs[0] starts at 0: the answer is in [lo, hi) */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (runs[mid] >> 8 <= c)
            lo = mid;
        else
            hi = mid;
    }
    return runs[lo] & 0xFF;
}

static unsigned uc_flags(uint32_t c)
{
    if (c < 0x80)
        return enc__uc_ascii[c];
    return run_value(enc__uc_flags, COUNT(enc__uc_flags), c);
}

static unsigned uc_ccc(uint32_t c)
{
    if (c < 0x300)
        return 0;
    return run_value(enc__uc_ccc, COUNT(enc__uc_ccc), c);
}

/* Python's chr(c).lower(): one or two code points into out. */
static size_t uc_lower(uint32_t c, uint32_t out[2])
{
    if (c < 0x80) {
        out[0] = c >= 'A' && c <= 'Z' ? c + 32 : c;
        return 1;
    }
    for (size_t i = 0; i < COUNT(enc__uc_lower_multi); i++) {
        if (enc__uc_lower_multi[i][0] == c) {
            out[0] = enc__uc_lower_multi[i][1];
            out[1] = enc__uc_lower_multi[i][2];
            return 2;
        }
    }
    out[0] = c;
    size_t lo = 0, hi = COUNT(enc__uc_lower);
    while (lo < hi) { /* first run with first > c */
        size_t mid = lo + (hi - lo) / 2;
        if (enc__uc_lower[mid].first <= c)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo > 0) {
        const enc__uc_lower_run *r = &enc__uc_lower[lo - 1];
        if (c <= r->last && (c - r->first) % r->stride == 0)
            out[0] = (uint32_t)((int32_t)c + r->delta);
    }
    return 1;
}

/* HF's _is_chinese_char: the CJK Unified Ideographs blocks and extensions
 * A-E plus the compatibility ideographs -- code point ranges, not a Unicode
 * property, so they live here rather than in the generated tables. */
static int is_cjk(uint32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* Hangul syllables decompose and compose by arithmetic (Unicode 3.12). */
#define HANGUL_S 0xAC00u
#define HANGUL_L 0x1100u
#define HANGUL_V 0x1161u
#define HANGUL_T 0x11A7u
#define HANGUL_LCOUNT 19u
#define HANGUL_VCOUNT 21u
#define HANGUL_TCOUNT 28u
#define HANGUL_NCOUNT (HANGUL_VCOUNT * HANGUL_TCOUNT)
#define HANGUL_SCOUNT (HANGUL_LCOUNT * HANGUL_NCOUNT)

static const enc__uc_decomp_entry *decomp_find(uint32_t c)
{
    size_t lo = 0, hi = COUNT(enc__uc_decomp);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (enc__uc_decomp[mid].cp < c)
            lo = mid + 1;
        else if (enc__uc_decomp[mid].cp > c)
            hi = mid;
        else
            return &enc__uc_decomp[mid];
    }
    return NULL;
}

/* The full canonical decomposition of c, unordered: at most
 * ENC__UC_NFD_MAX code points into out.  The recursion is as deep as the
 * data (three levels in Unicode 14). */
static size_t uc_decompose(uint32_t c, uint32_t *out)
{
    if (c >= HANGUL_S && c < HANGUL_S + HANGUL_SCOUNT) {
        uint32_t s = c - HANGUL_S;
        out[0] = HANGUL_L + s / HANGUL_NCOUNT;
        out[1] = HANGUL_V + s % HANGUL_NCOUNT / HANGUL_TCOUNT;
        if (s % HANGUL_TCOUNT == 0)
            return 2;
        out[2] = HANGUL_T + s % HANGUL_TCOUNT;
        return 3;
    }
    const enc__uc_decomp_entry *e = c < 0xC0 ? NULL : decomp_find(c);
    if (e == NULL) {
        out[0] = c;
        return 1;
    }
    size_t n = uc_decompose(e->d0, out);
    if (e->d1 != 0)
        n += uc_decompose(e->d1, out + n);
    return n;
}

/* The primary composite of a + b, or 0. */
static uint32_t uc_compose(uint32_t a, uint32_t b)
{
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_LCOUNT && b >= HANGUL_V &&
        b < HANGUL_V + HANGUL_VCOUNT)
        return HANGUL_S + ((a - HANGUL_L) * HANGUL_VCOUNT + (b - HANGUL_V)) * HANGUL_TCOUNT;
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_SCOUNT && (a - HANGUL_S) % HANGUL_TCOUNT == 0 &&
        b > HANGUL_T && b < HANGUL_T + HANGUL_TCOUNT)
        return a + (b - HANGUL_T);
    if (b < ENC__UC_COMP_MIN2)
        return 0;
    size_t lo = 0, hi = COUNT(enc__uc_comp);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const enc__uc_decomp_entry *e = &enc__uc_decomp[enc__uc_comp[mid]];
        if (e->d0 < a || (e->d0 == a && e->d1 < b))
            lo = mid + 1;
        else if (e->d0 == a && e->d1 == b)
            return e->cp;
        else
            hi = mid;
    }
    return 0;
}

/* ---- growable code point buffers ------------------------------------------------ */

typedef struct cpbuf {
    uint32_t *p;
    size_t n, cap;
} cpbuf;

/* Room for at least need code points in total. */
static int cp_reserve(cpbuf *b, size_t need)
{
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) {
        if (cap > SIZE_MAX / 2 / sizeof(uint32_t))
            return ENC_NOMEM;
        cap *= 2;
    }
    uint32_t *p = realloc(b->p, cap * sizeof *p);
    if (p == NULL)
        return ENC_NOMEM;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* ---- normalisation -------------------------------------------------------------- */

/* Canonical ordering: each run of non-starters sorted by combining class,
 * stably.  Short runs (the usual one or two marks) by insertion; long ones
 * by counting sort through tmp, so a hostile run of marks costs O(n), not
 * O(n^2). */
static int canonical_order(uint32_t *p, size_t n, cpbuf *tmp)
{
    size_t i = 0;
    while (i < n) {
        if (uc_ccc(p[i]) == 0) {
            i++;
            continue;
        }
        size_t j = i + 1;
        while (j < n && uc_ccc(p[j]) != 0)
            j++;
        size_t len = j - i;
        if (len <= 16) {
            for (size_t k = i + 1; k < j; k++) {
                uint32_t c = p[k];
                unsigned cc = uc_ccc(c);
                size_t m = k;
                while (m > i && uc_ccc(p[m - 1]) > cc) {
                    p[m] = p[m - 1];
                    m--;
                }
                p[m] = c;
            }
        } else {
            if (cp_reserve(tmp, len))
                return ENC_NOMEM;
            size_t start[257] = {0};
            for (size_t k = i; k < j; k++)
                start[uc_ccc(p[k]) + 1]++;
            for (size_t c = 1; c < 257; c++)
                start[c] += start[c - 1];
            for (size_t k = i; k < j; k++)
                tmp->p[start[uc_ccc(p[k])]++] = p[k];
            memcpy(p + i, tmp->p, len * sizeof *p);
        }
        i = j;
    }
    return 0;
}

/* dst = NFD(src[0..n)). */
static int nfd(const uint32_t *src, size_t n, cpbuf *dst, cpbuf *tmp)
{
    if (n > SIZE_MAX / ENC__UC_NFD_MAX || cp_reserve(dst, n * ENC__UC_NFD_MAX))
        return ENC_NOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += uc_decompose(src[i], dst->p + k);
    dst->n = k;
    return canonical_order(dst->p, k, tmp);
}

/* Canonical composition of NFD text, in place (UAX #15, 1.3): each
 * character joins the last starter when nothing between blocks it. */
static size_t compose(uint32_t *p, size_t n)
{
    size_t out = 0, starter = SIZE_MAX;
    unsigned last_cc = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = p[i];
        unsigned cc = uc_ccc(c);
        /* Adjacent to the starter, or after non-starters of a lower class
         * (canonical order makes the last one the highest). */
        if (starter != SIZE_MAX && (out == starter + 1 || (last_cc != 0 && last_cc < cc))) {
            uint32_t k = uc_compose(p[starter], c);
            if (k != 0) {
                p[starter] = k;
                continue;
            }
        }
        if (cc == 0)
            starter = out;
        last_cc = cc;
        p[out++] = c;
    }
    return out;
}

/* ---- the vocabulary -------------------------------------------------------------- */

struct enc_tok {
    char *text;      /* the file, each line NUL-terminated in place */
    uint32_t *off;   /* [n] id -> offset of its token in text */
    uint32_t *len;   /* [n] id -> its length in bytes */
    int32_t *slots;  /* [nslots] hash slots: an id, or -1 */
    size_t n, nslots;
    int32_t special[5]; /* ids of the strings in SPECIALS; [MASK] may be [UNK]'s */
    enc_tok_opts o;
};

/* HF's special tokens, in the order of enc_tok.special.  The first four are
 * required; [MASK] is optional. */
static const char *const SPECIALS[5] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
enum { SP_PAD, SP_UNK, SP_CLS, SP_SEP, SP_MASK };

/* FNV-1a over prefix then s; a fixed basis, so no global state. */
static uint32_t hash_bytes(const char *prefix, size_t plen, const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < plen; i++)
        h = (h ^ (unsigned char)prefix[i]) * 16777619u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* The id of the token prefix + s (plen + n bytes), or -1. */
static int32_t vocab_find(const enc_tok *t, const char *prefix, size_t plen, const char *s,
                          size_t n)
{
    size_t mask = t->nslots - 1;
    for (size_t i = hash_bytes(prefix, plen, s, n) & mask;; i = (i + 1) & mask) {
        int32_t id = t->slots[i];
        if (id < 0)
            return -1;
        const char *tok = t->text + t->off[id];
        if (t->len[id] == plen + n && memcmp(tok, prefix, plen) == 0 &&
            memcmp(tok + plen, s, n) == 0)
            return id;
    }
}

/* Inserts id; a token already present takes the new id (HF keeps the last
 * line of a repeated token). */
static void vocab_insert(enc_tok *t, int32_t id)
{
    size_t mask = t->nslots - 1;
    const char *tok = t->text + t->off[id];
    size_t n = t->len[id];
    for (size_t i = hash_bytes("", 0, tok, n) & mask;; i = (i + 1) & mask) {
        int32_t old = t->slots[i];
        if (old < 0 || (t->len[old] == n && memcmp(t->text + t->off[old], tok, n) == 0)) {
            t->slots[i] = id;
            return;
        }
    }
}

static int read_file(const char *path, char **out, size_t *outlen, char *errbuf, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return enc__fail(errbuf, errlen, ENC_IO, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_VOCAB_BYTES) {
                free(buf);
                fclose(f);
                return enc__fail(errbuf, errlen, ENC_TOOBIG, "%s: a vocabulary over %zu bytes", path,
                            MAX_VOCAB_BYTES);
            }
            size_t ncap = cap ? cap * 2 : (size_t)1 << 16;
            char *p = realloc(buf, ncap + 1); /* + 1: room for a final NUL */
            if (p == NULL) {
                free(buf);
                fclose(f);
                return enc__fail(errbuf, errlen, ENC_NOMEM, "%s: out of memory", path);
            }
            buf = p;
            cap = ncap;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                int e = errno;
                free(buf);
                fclose(f);
                return enc__fail(errbuf, errlen, ENC_IO, "%s: %s", path, strerror(e));
            }
            break;
        }
    }
    fclose(f);
    *out = buf;
    *outlen = n;
    return 0;
}

int enc_tok_load(const char *vocab_path, const enc_tok_opts *o, enc_tok **out, char *errbuf,
                 size_t errlen)
{
    assert(vocab_path != NULL && out != NULL);
    enc_tok_opts opts = ENC_TOK_OPTS_INIT;
    if (o != NULL)
        opts = *o;
    if ((opts.lower_case != 0 && opts.lower_case != 1) ||
        (opts.strip_accents < -1 || opts.strip_accents > 1) ||
        (opts.tokenize_chinese_chars != 0 && opts.tokenize_chinese_chars != 1))
        return enc__fail(errbuf, errlen, ENC_INVAL,
                    "tokenizer options: lower_case %d, strip_accents %d, "
                    "tokenize_chinese_chars %d (want 0/1, -1/0/1, 0/1)",
                    opts.lower_case, opts.strip_accents, opts.tokenize_chinese_chars);

    char *text = NULL;
    size_t size = 0;
    int rc = read_file(vocab_path, &text, &size, errbuf, errlen);
    if (rc)
        return rc;
    if (size == 0) {
        free(text);
        return enc__fail(errbuf, errlen, ENC_FORMAT, "%s: empty vocabulary file", vocab_path);
    }
    text[size] = '\0';

    /* Lines end at \n, \r\n or a lone \r (Python's universal newlines); a
     * last line without an end still counts. */
    size_t nlines = 0;
    for (size_t i = 0; i < size; i++) {
        if (text[i] == '\n' || (text[i] == '\r' && (i + 1 == size || text[i + 1] != '\n')))
            nlines++;
    }
    if (text[size - 1] != '\n' && text[size - 1] != '\r')
        nlines++;
    if (nlines > INT32_MAX) {
        free(text);
        return enc__fail(errbuf, errlen, ENC_TOOBIG, "%s: over %d lines", vocab_path, INT32_MAX);
    }

    /* One block: the handle, off[n], len[n], slots[nslots] (load <= 1/2). */
    size_t nslots = 16;
    while (nslots < 2 * nlines)
        nslots *= 2;
    size_t bytes = sizeof(enc_tok) + 2 * nlines * sizeof(uint32_t) + nslots * sizeof(int32_t);
    enc_tok *t = malloc(bytes);
    if (t == NULL) {
        free(text);
        return enc__fail(errbuf, errlen, ENC_NOMEM, "%s: out of memory", vocab_path);
    }
    t->text = text;
    t->off = (uint32_t *)(t + 1);
    t->len = t->off + nlines;
    t->slots = (int32_t *)(t->len + nlines);
    t->n = nlines;
    t->nslots = nslots;
    t->o = opts;
    memset(t->slots, 0xFF, nslots * sizeof(int32_t)); /* all -1 */

    size_t start = 0, line = 0;
    for (size_t i = 0; i <= size && line < nlines; i++) {
        if (i < size && text[i] != '\n' && text[i] != '\r')
            continue;
        size_t len = i - start;
        const char *nul = memchr(text + start, '\0', len);
        size_t bad = utf8_invalid_at((const unsigned char *)text + start, len);
        if (nul != NULL || bad < len) {
            rc = nul != NULL
                     ? enc__fail(errbuf, errlen, ENC_FORMAT, "%s:%zu: NUL byte in a token", vocab_path,
                            line + 1)
                     : enc__fail(errbuf, errlen, ENC_FORMAT,
                            "%s:%zu: invalid UTF-8 at byte %zu of the line", vocab_path, line + 1,
                            bad + 1);
            enc_tok_free(t);
            return rc;
        }
        t->off[line] = (uint32_t)start;
        t->len[line] = (uint32_t)len;
        int crlf = i + 1 < size && text[i] == '\r' && text[i + 1] == '\n';
        text[i] = '\0'; /* the line's \n or \r, or the byte past the end */
        if (crlf)
            i++;
        vocab_insert(t, (int32_t)line);
        line++;
        start = i + 1;
    }
    assert(line == nlines);

    for (int k = 0; k < 5; k++) {
        t->special[k] = vocab_find(t, "", 0, SPECIALS[k], strlen(SPECIALS[k]));
        if (t->special[k] < 0 && k != SP_MASK) {
            int bom = size >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0;
            rc = enc__fail(errbuf, errlen, ENC_MISSING, "%s: the vocabulary has no %s token%s",
                      vocab_path, SPECIALS[k],
                      bom ? " (the file starts with a byte-order mark, which belongs to the "
                            "first token)"
                          : "");
            enc_tok_free(t);
            return rc;
        }
    }
    if (t->special[SP_MASK] < 0)
        t->special[SP_MASK] = t->special[SP_UNK];
    *out = t;
    return 0;
}

void enc_tok_free(enc_tok *t)
{
    if (t == NULL)
        return;
    free(t->text);
    free(t);
}

int enc_tok_id(const enc_tok *t, const char *token)
{
    assert(t != NULL && token != NULL);
    return vocab_find(t, "", 0, token, strlen(token));
}

size_t enc_tok_vocab_size(const enc_tok *t)
{
    assert(t != NULL);
    return t->n;
}

const char *enc_tok_token(const enc_tok *t, int32_t id)
{
    assert(t != NULL);
    if (id < 0 || (size_t)id >= t->n)
        return NULL;
    return t->text + t->off[id];
}

/* ---- encoding --------------------------------------------------------------------- */

/* One call's state.  out holds the tokens between [CLS] and [SEP]. */
typedef struct tok_run {
    const enc_tok *t;
    cpbuf word;    /* the current word: cleaned, not yet normalised */
    cpbuf a, b;    /* NFC, lower-casing and NFD results */
    cpbuf tmp;     /* canonical ordering scratch */
    int32_t *out;
    size_t nout, cap;
} tok_run;

static int run_full(const tok_run *r)
{
    return r->nout == r->cap;
}

static void emit(tok_run *r, int32_t id)
{
    if (r->nout < r->cap)
        r->out[r->nout++] = id;
}

/* WordPiece over one word of n code points: greedy longest match first,
 * "##" before every piece but the first; one [UNK] for the whole word when
 * it is too long or some piece is not in the vocabulary. */
static void wordpiece(tok_run *r, const uint32_t *w, size_t n)
{
    const enc_tok *t = r->t;
    assert(n > 0);
    if (n > ENC_TOK_MAX_WORD_CHARS) {
        emit(r, t->special[SP_UNK]);
        return;
    }
    char u8[4 * ENC_TOK_MAX_WORD_CHARS];
    size_t off[ENC_TOK_MAX_WORD_CHARS + 1];
    int32_t sub[ENC_TOK_MAX_WORD_CHARS];
    off[0] = 0;
    for (size_t i = 0; i < n; i++)
        off[i + 1] = off[i] + utf8_put(w[i], u8 + off[i]);
    size_t nsub = 0, start = 0;
    while (start < n) {
        int32_t id = -1;
        size_t end = n;
        for (; end > start; end--) {
            id = vocab_find(t, "##", start > 0 ? 2 : 0, u8 + off[start], off[end] - off[start]);
            if (id >= 0)
                break;
        }
        if (id < 0) {
            emit(r, t->special[SP_UNK]);
            return;
        }
        sub[nsub++] = id;
        start = end;
    }
    for (size_t i = 0; i < nsub; i++)
        emit(r, sub[i]);
}

/* Whether w is spelled like one of the special tokens (HF's never_split:
 * such a word skips lower-casing, accent stripping and punctuation
 * splitting, though it still goes through WordPiece). */
static int is_special_word(const uint32_t *w, size_t n)
{
    for (int k = 0; k < 5; k++) {
        const char *s = SPECIALS[k];
        size_t i = 0;
        while (i < n && s[i] != '\0' && w[i] == (unsigned char)s[i])
            i++;
        if (i == n && s[i] == '\0')
            return 1;
    }
    return 0;
}

/* Punctuation becomes one-code-point words, the rest is cut there; each
 * piece goes through WordPiece.  The spaces test is HF's final
 * whitespace_tokenize, which finds none here. */
static void split_punct(tok_run *r, const uint32_t *p, size_t n)
{
    size_t start = 0;
    for (size_t i = 0; i < n && !run_full(r); i++) {
        unsigned f = uc_flags(p[i]);
        if (f & (ENC__UC_PUNCT | ENC__UC_SPACE)) {
            if (i > start)
                wordpiece(r, p + start, i - start);
            if ((f & ENC__UC_PUNCT) && !run_full(r))
                wordpiece(r, p + i, 1);
            start = i + 1;
        }
    }
    if (n > start && !run_full(r))
        wordpiece(r, p + start, n - start);
}

/* One white-space-delimited word, cleaned: BasicTokenizer from NFC on, then
 * WordPiece on each piece. */
static int do_word(tok_run *r, const uint32_t *w, size_t n)
{
    const enc_tok_opts *o = &r->t->o;
    /* ASCII, the common case, is its own NFC and NFD and has no marks; with
     * lower_case on, the first pass has lower-cased it already. */
    size_t nascii = 0;
    while (nascii < n && w[nascii] < 0x80)
        nascii++;
    if (nascii == n) {
        if (is_special_word(w, n))
            wordpiece(r, w, n);
        else
            split_punct(r, w, n);
        return 0;
    }
    int rc = nfd(w, n, &r->a, &r->tmp);
    if (rc)
        return rc;
    r->a.n = compose(r->a.p, r->a.n);
    if (is_special_word(r->a.p, r->a.n)) {
        wordpiece(r, r->a.p, r->a.n);
        return 0;
    }
    cpbuf *cur = &r->a;
    if (o->lower_case) {
        if (r->a.n > SIZE_MAX / 2 || cp_reserve(&r->b, 2 * r->a.n))
            return ENC_NOMEM;
        size_t k = 0;
        for (size_t i = 0; i < r->a.n; i++)
            k += uc_lower(r->a.p[i], r->b.p + k);
        r->b.n = k;
        cur = &r->b;
    }
    if (o->strip_accents == 1 || (o->strip_accents == -1 && o->lower_case)) {
        cpbuf *dst = cur == &r->a ? &r->b : &r->a;
        rc = nfd(cur->p, cur->n, dst, &r->tmp);
        if (rc)
            return rc;
        size_t k = 0;
        for (size_t i = 0; i < dst->n; i++) {
            if (!(uc_flags(dst->p[i]) & ENC__UC_MN))
                dst->p[k++] = dst->p[i];
        }
        dst->n = k;
        cur = dst;
    }
    split_punct(r, cur->p, cur->n);
    return 0;
}

static int flush_word(tok_run *r)
{
    if (r->word.n == 0 || run_full(r))
        return 0;
    int rc = do_word(r, r->word.p, r->word.n);
    r->word.n = 0;
    return rc;
}

static int push_cp(tok_run *r, uint32_t c)
{
    if (r->word.n == r->word.cap && cp_reserve(&r->word, r->word.n + 1))
        return ENC_NOMEM;
    r->word.p[r->word.n++] = c;
    return 0;
}

/* Text between special tokens: decoding, the first lower-casing, cleaning
 * and CJK splitting, cut into words for do_word. */
static int do_chunk(tok_run *r, const unsigned char *s, size_t len)
{
    const enc_tok_opts *o = &r->t->o;
    size_t i = 0;
    int rc = 0;
    r->word.n = 0;
    while (i < len && !run_full(r) && rc == 0) {
        uint32_t cp[2];
        size_t k = 1;
        cp[0] = utf8_next(s, &i);
        if (o->lower_case)
            k = uc_lower(cp[0], cp);
        for (size_t j = 0; j < k && rc == 0; j++) {
            uint32_t c = cp[j];
            unsigned f = uc_flags(c);
            if (c == 0 || c == 0xFFFD || (f & ENC__UC_CTRL))
                continue;
            if (f & (ENC__UC_WS | ENC__UC_SPACE)) {
                rc = flush_word(r);
            } else if (o->tokenize_chinese_chars && is_cjk(c)) {
                rc = flush_word(r);
                if (rc == 0)
                    rc = push_cp(r, c);
                if (rc == 0)
                    rc = flush_word(r);
            } else {
                rc = push_cp(r, c);
            }
        }
    }
    if (rc == 0)
        rc = flush_word(r);
    return rc;
}

/* The special token spelled at s, as an index into SPECIALS, or -1. */
static int special_at(const char *s)
{
    for (int k = 0; k < 5; k++) {
        size_t n = strlen(SPECIALS[k]);
        if (strncmp(s, SPECIALS[k], n) == 0)
            return k;
    }
    return -1;
}

int enc_tok_encode(const enc_tok *t, const char *text, size_t max_len, int32_t *ids,
                   int32_t *mask, size_t *n, char *errbuf, size_t errlen)
{
    assert(t != NULL && text != NULL && ids != NULL && mask != NULL && n != NULL);
    if (max_len < 2)
        return enc__fail(errbuf, errlen, ENC_INVAL, "max_len %zu: room for [CLS] and [SEP] needed",
                    max_len);
    size_t len = strlen(text);
    size_t bad = utf8_invalid_at((const unsigned char *)text, len);
    if (bad < len)
        return enc__fail(errbuf, errlen, ENC_INVAL, "invalid UTF-8 at byte offset %zu (0x%02X)", bad,
                    (unsigned char)text[bad]);

    tok_run r = {.t = t, .cap = max_len - 2};
    if (r.cap > 0) {
        if (r.cap > SIZE_MAX / sizeof(int32_t) || (r.out = malloc(r.cap * sizeof(int32_t))) == NULL)
            return enc__fail(errbuf, errlen, ENC_NOMEM, "out of memory");
    }
    /* Special tokens are cut out before anything else sees the text, as
     * HF's added-token trie does; '[' is ASCII, so a byte scan is safe. */
    int rc = 0;
    size_t chunk = 0, i = 0;
    while (i < len && rc == 0 && !run_full(&r)) {
        int k = text[i] == '[' ? special_at(text + i) : -1;
        if (k < 0) {
            i++;
            continue;
        }
        rc = do_chunk(&r, (const unsigned char *)text + chunk, i - chunk);
        if (rc == 0)
            emit(&r, t->special[k]);
        i += strlen(SPECIALS[k]);
        chunk = i;
    }
    if (rc == 0 && !run_full(&r))
        rc = do_chunk(&r, (const unsigned char *)text + chunk, len - chunk);
    free(r.word.p);
    free(r.a.p);
    free(r.b.p);
    free(r.tmp.p);
    if (rc) {
        free(r.out);
        return enc__fail(errbuf, errlen, rc, "out of memory");
    }

    ids[0] = t->special[SP_CLS];
    for (size_t j = 0; j < r.nout; j++)
        ids[1 + j] = r.out[j];
    ids[1 + r.nout] = t->special[SP_SEP];
    for (size_t j = 0; j < max_len; j++) {
        if (j >= r.nout + 2)
            ids[j] = t->special[SP_PAD];
        mask[j] = j < r.nout + 2;
    }
    *n = r.nout + 2;
    free(r.out);
    return 0;
}
