/* vocab_build.c - our own WordPiece vocabulary builder: pre-tokenize as the
 * tokenizer does (ASCII rules), start from characters, merge by the
 * likelihood score count(xy) / (count(x) count(y)).  Details in train.h. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <assert.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "train/train.h"

/* encoder/tokenizer.c's limits and special tokens (ENC_TOK_MAX_WORD_CHARS
 * is public; the specials' spelling is fixed by BERT). */
#define MAX_WORD_CHARS 100
static const char *const SPECIALS[5] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};

/* ---- UTF-8 -------------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 when it is
 * invalid: overlong, surrogate, above U+10FFFF, truncated. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp, min;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, cp = c & 0x1F, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, cp = c & 0x0F, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, cp = c & 0x07, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/* ---- hash tables ---------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t hash_str(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return mix64(h);
}

/* Open addressing, power-of-two size, slots hold index + 1 (0: empty).
 * Keys live in the caller's arrays; the table only maps hashes to indices. */
typedef struct itable {
    uint32_t *slot;
    size_t cap; /* power of two */
} itable;

static int itable_init(itable *t, size_t want)
{
    size_t cap = 64;
    while (cap < 2 * want)
        cap *= 2;
    t->slot = calloc(cap, sizeof *t->slot);
    t->cap = cap;
    return t->slot == NULL ? ENC_NOMEM : ENC_OK;
}

/* ---- the builder's state ----------------------------------------------------------------- */

typedef struct strv {
    char *s;
    size_t len;
} strv;

typedef struct builder {
    /* distinct words of the corpus */
    strv *word;
    int64_t *freq;
    size_t nword, capword;
    itable wtab;
    /* symbols: characters and merged pieces, "##" included in the text */
    strv *sym;
    int64_t *scount; /* occurrences in the current segmentation, weighted */
    size_t nsym, capsym;
    itable stab;
    /* segmentation: word w is seg[off[w] .. off[w] + len[w]) */
    int32_t *seg;
    size_t *off, *len;
    uint64_t *mask; /* bit (id % 64) set for each symbol the word has held */
    /* adjacent pairs */
    int32_t *pa, *pb;
    int64_t *pcount;
    size_t npair, cappair;
    itable ptab;
    /* the vocabulary being built, symbol ids in order */
    int32_t *vocab;
    size_t nvocab, capvocab;
} builder;

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return ENC_OK;
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem)
            return ENC_NOMEM;
        c *= 2;
    }
    void *q = realloc(*p, c * elem);
    if (q == NULL)
        return ENC_NOMEM;
    *p = q;
    *cap = c;
    return ENC_OK;
}

static int grow_words(builder *b, size_t need)
{
    size_t c = b->capword;
    if (need <= c)
        return ENC_OK;
    size_t c1 = c, c2 = c;
    if (grow((void **)&b->word, &c1, need, sizeof *b->word) ||
        grow((void **)&b->freq, &c2, need, sizeof *b->freq))
        return ENC_NOMEM;
    b->capword = c1 < c2 ? c1 : c2;
    return ENC_OK;
}

static int grow_syms(builder *b, size_t need)
{
    size_t c = b->capsym;
    if (need <= c)
        return ENC_OK;
    size_t c1 = c, c2 = c;
    if (grow((void **)&b->sym, &c1, need, sizeof *b->sym) ||
        grow((void **)&b->scount, &c2, need, sizeof *b->scount))
        return ENC_NOMEM;
    b->capsym = c1 < c2 ? c1 : c2;
    return ENC_OK;
}

static int grow_pairs(builder *b, size_t need)
{
    size_t c = b->cappair;
    if (need <= c)
        return ENC_OK;
    size_t c1 = c, c2 = c, c3 = c;
    if (grow((void **)&b->pa, &c1, need, sizeof *b->pa) ||
        grow((void **)&b->pb, &c2, need, sizeof *b->pb) ||
        grow((void **)&b->pcount, &c3, need, sizeof *b->pcount))
        return ENC_NOMEM;
    b->cappair = c1 < c2 ? (c1 < c3 ? c1 : c3) : (c2 < c3 ? c2 : c3);
    return ENC_OK;
}

/* Rehashes t into twice the room; key(i) gives entry i's hash. */
static int itable_grow(itable *t, uint64_t (*key)(const builder *, size_t), const builder *b)
{
    itable n;
    if (itable_init(&n, t->cap))
        return ENC_NOMEM;
    for (size_t s = 0; s < t->cap; s++) {
        if (t->slot[s] == 0)
            continue;
        size_t i = t->slot[s] - 1;
        size_t p = key(b, i) & (n.cap - 1);
        while (n.slot[p] != 0)
            p = (p + 1) & (n.cap - 1);
        n.slot[p] = t->slot[s];
    }
    free(t->slot);
    *t = n;
    return ENC_OK;
}

static uint64_t word_key(const builder *b, size_t i)
{
    return hash_str(b->word[i].s, b->word[i].len);
}

static uint64_t sym_key(const builder *b, size_t i)
{
    return hash_str(b->sym[i].s, b->sym[i].len);
}

static uint64_t pair_hash(int32_t a, int32_t c)
{
    return mix64(((uint64_t)(uint32_t)a << 32) | (uint32_t)c);
}

static uint64_t pair_key(const builder *b, size_t i)
{
    return pair_hash(b->pa[i], b->pb[i]);
}

static char *dup_bytes(const char *a, size_t na, const char *c, size_t nc)
{
    char *s = malloc(na + nc + 1);
    if (s != NULL) {
        memcpy(s, a, na);
        memcpy(s + na, c, nc);
        s[na + nc] = '\0';
    }
    return s;
}

/* Adds freq to word w[0 .. n). */
static int add_word(builder *b, const char *w, size_t n, int64_t freq)
{
    uint64_t h = hash_str(w, n);
    size_t p = h & (b->wtab.cap - 1);
    for (; b->wtab.slot[p] != 0; p = (p + 1) & (b->wtab.cap - 1)) {
        size_t i = b->wtab.slot[p] - 1;
        if (b->word[i].len == n && memcmp(b->word[i].s, w, n) == 0) {
            b->freq[i] += freq;
            return ENC_OK;
        }
    }
    if (b->nword >= UINT32_MAX - 1 || grow_words(b, b->nword + 1))
        return ENC_NOMEM;
    char *s = dup_bytes(w, n, "", 0);
    if (s == NULL)
        return ENC_NOMEM;
    b->word[b->nword] = (strv){s, n};
    b->freq[b->nword] = freq;
    b->wtab.slot[p] = (uint32_t)(++b->nword);
    if (2 * b->nword > b->wtab.cap && itable_grow(&b->wtab, word_key, b))
        return ENC_NOMEM;
    return ENC_OK;
}

/* The id of symbol prefix + s (created with count 0 when new), or -1 on
 * failure (out of memory). */
static int32_t sym_id(builder *b, const char *prefix, const char *s, size_t n)
{
    size_t np = strlen(prefix);
    /* hash of the concatenation without building it */
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < np; i++)
        h = (h ^ (unsigned char)prefix[i]) * 1099511628211ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    h = mix64(h);
    size_t p = h & (b->stab.cap - 1);
    for (; b->stab.slot[p] != 0; p = (p + 1) & (b->stab.cap - 1)) {
        size_t i = b->stab.slot[p] - 1;
        if (b->sym[i].len == np + n && memcmp(b->sym[i].s, prefix, np) == 0 &&
            memcmp(b->sym[i].s + np, s, n) == 0)
            return (int32_t)i;
    }
    if (b->nsym >= INT32_MAX - 1 || grow_syms(b, b->nsym + 1))
        return -1;
    char *t = dup_bytes(prefix, np, s, n);
    if (t == NULL)
        return -1;
    b->sym[b->nsym] = (strv){t, np + n};
    b->scount[b->nsym] = 0;
    b->stab.slot[p] = (uint32_t)(++b->nsym);
    if (2 * b->nsym > b->stab.cap && itable_grow(&b->stab, sym_key, b))
        return -1;
    return (int32_t)(b->nsym - 1);
}

/* Adds d to the count of pair (x, y), creating it. */
static int pair_add(builder *b, int32_t x, int32_t y, int64_t d)
{
    size_t p = pair_hash(x, y) & (b->ptab.cap - 1);
    for (; b->ptab.slot[p] != 0; p = (p + 1) & (b->ptab.cap - 1)) {
        size_t i = b->ptab.slot[p] - 1;
        if (b->pa[i] == x && b->pb[i] == y) {
            b->pcount[i] += d;
            return ENC_OK;
        }
    }
    if (b->npair >= UINT32_MAX - 1 || grow_pairs(b, b->npair + 1))
        return ENC_NOMEM;
    b->pa[b->npair] = x;
    b->pb[b->npair] = y;
    b->pcount[b->npair] = d;
    b->ptab.slot[p] = (uint32_t)(++b->npair);
    if (2 * b->npair > b->ptab.cap && itable_grow(&b->ptab, pair_key, b))
        return ENC_NOMEM;
    return ENC_OK;
}

static int vocab_push(builder *b, int32_t id)
{
    if (grow((void **)&b->vocab, &b->capvocab, b->nvocab + 1, sizeof *b->vocab))
        return ENC_NOMEM;
    b->vocab[b->nvocab++] = id;
    return ENC_OK;
}

static void builder_free(builder *b)
{
    for (size_t i = 0; i < b->nword; i++)
        free(b->word[i].s);
    for (size_t i = 0; i < b->nsym; i++)
        free(b->sym[i].s);
    free(b->word);
    free(b->freq);
    free(b->wtab.slot);
    free(b->sym);
    free(b->scount);
    free(b->stab.slot);
    free(b->seg);
    free(b->off);
    free(b->len);
    free(b->mask);
    free(b->pa);
    free(b->pb);
    free(b->pcount);
    free(b->ptab.slot);
    free(b->vocab);
}

/* ---- pre-tokenizing ------------------------------------------------------------------------ */

static int is_ascii_punct(unsigned c)
{
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
           (c >= 123 && c <= 126);
}

/* Dropped by the tokenizer's cleaning (category Cc less \t \n \r). */
static int is_ascii_dropped(unsigned c)
{
    return (c < 32 && c != '\t' && c != '\n' && c != '\r') || c == 127;
}

typedef struct wordbuf {
    char *s;
    size_t n, cap;
    size_t chars; /* code points */
} wordbuf;

static int flush(builder *b, wordbuf *w)
{
    int rc = ENC_OK;
    if (w->n > 0 && w->chars <= MAX_WORD_CHARS)
        rc = add_word(b, w->s, w->n, 1);
    w->n = 0;
    w->chars = 0;
    return rc;
}

static int wb_put(wordbuf *w, const char *s, size_t n)
{
    if (grow((void **)&w->s, &w->cap, w->n + n, 1))
        return ENC_NOMEM;
    memcpy(w->s + w->n, s, n);
    w->n += n;
    w->chars++;
    return ENC_OK;
}

/* Cuts text into words and counts them.  ENC_INVAL on invalid UTF-8. */
static int pretokenize(builder *b, const char *text, int lower, wordbuf *w)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text), i = 0;
    int rc = ENC_OK;
    while (i < n && rc == ENC_OK) {
        if (s[i] == '[') {
            size_t k = 0;
            while (k < 5 && strncmp(text + i, SPECIALS[k], strlen(SPECIALS[k])) != 0)
                k++;
            if (k < 5) { /* cut out before anything else sees the text */
                rc = flush(b, w);
                i += strlen(SPECIALS[k]);
                continue;
            }
        }
        size_t len = utf8_len(s + i, n - i);
        if (len == 0)
            return ENC_INVAL;
        if (len > 1) {
            rc = wb_put(w, text + i, len);
            i += len;
            continue;
        }
        char c = (char)s[i++];
        if (is_ascii_dropped((unsigned char)c))
            continue;
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
            rc = flush(b, w);
        } else if (is_ascii_punct((unsigned char)c)) {
            rc = flush(b, w);
            if (rc == ENC_OK)
                rc = wb_put(w, &c, 1);
            if (rc == ENC_OK)
                rc = flush(b, w);
        } else {
            if (lower && c >= 'A' && c <= 'Z')
                c = (char)(c - 'A' + 'a');
            rc = wb_put(w, &c, 1);
        }
    }
    if (rc == ENC_OK)
        rc = flush(b, w);
    return rc;
}

/* ---- merging --------------------------------------------------------------------------------- */

static int cmp_strv(const strv *x, const strv *y)
{
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->s, y->s, n);
    if (c != 0)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

static int cmp_word_idx(const void *x, const void *y, const builder *b)
{
    return cmp_strv(&b->word[*(const uint32_t *)x], &b->word[*(const uint32_t *)y]);
}

/* Byte k of x + y-without-"##" (the merged token), for comparisons. */
static size_t merged_len(const builder *b, int32_t x, int32_t y)
{
    return b->sym[x].len + b->sym[y].len - 2;
}

static unsigned char merged_at(const builder *b, int32_t x, int32_t y, size_t k)
{
    if (k < b->sym[x].len)
        return (unsigned char)b->sym[x].s[k];
    return (unsigned char)b->sym[y].s[2 + k - b->sym[x].len];
}

/* <0 when the merged token of pair p sorts before that of pair q. */
static int cmp_merged(const builder *b, size_t p, size_t q)
{
    size_t np = merged_len(b, b->pa[p], b->pb[p]), nq = merged_len(b, b->pa[q], b->pb[q]);
    size_t n = np < nq ? np : nq;
    for (size_t k = 0; k < n; k++) {
        unsigned char x = merged_at(b, b->pa[p], b->pb[p], k);
        unsigned char y = merged_at(b, b->pa[q], b->pb[q], k);
        if (x != y)
            return x < y ? -1 : 1;
    }
    if (np != nq)
        return np < nq ? -1 : 1;
    return cmp_strv(&b->sym[b->pa[p]], &b->sym[b->pa[q]]);
}

/* The pair to merge next, or SIZE_MAX when none has min_count. */
static size_t best_pair(const builder *b, int64_t min_count)
{
    size_t best = SIZE_MAX;
    double bs = 0;
    for (size_t p = 0; p < b->npair; p++) {
        int64_t c = b->pcount[p];
        if (c <= 0 || c < min_count)
            continue;
        double s = (double)c / ((double)b->scount[b->pa[p]] * (double)b->scount[b->pb[p]]);
        if (best != SIZE_MAX) {
            if (s < bs)
                continue;
            if (s == bs) {
                int64_t cb = b->pcount[best];
                if (c < cb || (c == cb && cmp_merged(b, p, best) >= 0))
                    continue;
            }
        }
        best = p;
        bs = s;
    }
    return best;
}

/* Adds d * freq to every adjacent pair of word w. */
static int word_pairs(builder *b, size_t w, int64_t d)
{
    const int32_t *s = b->seg + b->off[w];
    for (size_t k = 0; k + 1 < b->len[w]; k++)
        if (pair_add(b, s[k], s[k + 1], d * b->freq[w]))
            return ENC_NOMEM;
    return ENC_OK;
}

/* Replaces every (x, y) in the segmentations by z, keeping the counts. */
static int apply_merge(builder *b, int32_t x, int32_t y, int32_t z)
{
    uint64_t need = (1ULL << (x & 63)) | (1ULL << (y & 63));
    for (size_t w = 0; w < b->nword; w++) {
        if ((b->mask[w] & need) != need || b->len[w] < 2)
            continue;
        int32_t *s = b->seg + b->off[w];
        size_t n = b->len[w], k = 0;
        while (k + 1 < n && !(s[k] == x && s[k + 1] == y))
            k++;
        if (k + 1 >= n)
            continue;
        if (word_pairs(b, w, -1))
            return ENC_NOMEM;
        size_t o = 0;
        for (size_t r = 0; r < n;) {
            if (r + 1 < n && s[r] == x && s[r + 1] == y) {
                s[o++] = z;
                b->scount[x] -= b->freq[w];
                b->scount[y] -= b->freq[w];
                b->scount[z] += b->freq[w];
                r += 2;
            } else {
                s[o++] = s[r++];
            }
        }
        b->len[w] = o;
        b->mask[w] |= 1ULL << (z & 63);
        if (word_pairs(b, w, +1))
            return ENC_NOMEM;
    }
    return ENC_OK;
}

/* Bytewise order of symbol ids, for the alphabet. */
static void sort_syms(const builder *b, int32_t *ids, size_t n)
{
    for (size_t i = 1; i < n; i++) { /* insertion sort: an alphabet is small */
        int32_t v = ids[i];
        size_t j = i;
        while (j > 0 && cmp_strv(&b->sym[ids[j - 1]], &b->sym[v]) > 0) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = v;
    }
}

static void sort_words(const builder *b, uint32_t *idx, size_t n)
{
    /* bottom-up merge sort: deterministic and O(n log n) without qsort_r */
    uint32_t *tmp = idx + n;
    for (size_t width = 1; width < n; width *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * width) {
            size_t mid = lo + width < n ? lo + width : n;
            size_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                tmp[k++] = cmp_word_idx(&idx[j], &idx[i], b) < 0 ? idx[j++] : idx[i++];
            while (i < mid)
                tmp[k++] = idx[i++];
            while (j < hi)
                tmp[k++] = idx[j++];
        }
        memcpy(idx, tmp, n * sizeof *idx);
    }
}

/* Segments every word into characters (in bytewise word order, so symbol
 * ids do not depend on hashing) and counts symbols and pairs. */
static int init_segments(builder *b)
{
    size_t total = 0;
    for (size_t w = 0; w < b->nword; w++)
        total += b->word[w].len;
    uint32_t *idx = malloc((2 * b->nword + 1) * sizeof *idx);
    b->seg = malloc((total > 0 ? total : 1) * sizeof *b->seg);
    b->off = malloc((b->nword + 1) * sizeof *b->off);
    b->len = malloc((b->nword + 1) * sizeof *b->len);
    b->mask = malloc((b->nword + 1) * sizeof *b->mask);
    if (idx == NULL || b->seg == NULL || b->off == NULL || b->len == NULL || b->mask == NULL) {
        free(idx);
        return ENC_NOMEM;
    }
    for (size_t w = 0; w < b->nword; w++)
        idx[w] = (uint32_t)w;
    sort_words(b, idx, b->nword);
    size_t at = 0;
    for (size_t k = 0; k < b->nword; k++) {
        size_t w = idx[k];
        const char *s = b->word[w].s;
        size_t n = b->word[w].len, len = 0;
        b->off[w] = at;
        b->mask[w] = 0;
        for (size_t i = 0; i < n;) {
            size_t cl = utf8_len((const unsigned char *)s + i, n - i);
            assert(cl > 0); /* validated while pre-tokenizing */
            int32_t id = sym_id(b, i == 0 ? "" : "##", s + i, cl);
            if (id < 0) {
                free(idx);
                return ENC_NOMEM;
            }
            b->seg[at + len++] = id;
            b->scount[id] += b->freq[w];
            b->mask[w] |= 1ULL << (id & 63);
            i += cl;
        }
        b->len[w] = len;
        at += len;
    }
    free(idx);
    for (size_t w = 0; w < b->nword; w++)
        if (word_pairs(b, w, +1))
            return ENC_NOMEM;
    return ENC_OK;
}

/* The alphabet: every symbol so far (characters only), word-initial ones
 * first, each group bytewise. */
static int push_alphabet(builder *b, int ascii, int lower)
{
    if (ascii) {
        for (int c = 33; c < 127; c++) {
            char ch = (char)c;
            if (lower && c >= 'A' && c <= 'Z')
                continue;
            if (sym_id(b, "", &ch, 1) < 0)
                return ENC_NOMEM;
            int alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                        (!lower && c >= 'A' && c <= 'Z');
            if (alnum && sym_id(b, "##", &ch, 1) < 0)
                return ENC_NOMEM;
        }
    }
    int32_t *ids = malloc((b->nsym + 1) * sizeof *ids);
    if (ids == NULL)
        return ENC_NOMEM;
    int rc = ENC_OK;
    for (int cont = 0; cont < 2 && rc == ENC_OK; cont++) {
        size_t n = 0;
        for (size_t i = 0; i < b->nsym; i++) {
            int is_cont = b->sym[i].len > 2 && memcmp(b->sym[i].s, "##", 2) == 0;
            /* a word-initial '#' is "#", never "##x" */
            if (is_cont == cont)
                ids[n++] = (int32_t)i;
        }
        sort_syms(b, ids, n);
        for (size_t i = 0; i < n && rc == ENC_OK; i++)
            rc = vocab_push(b, ids[i]);
    }
    free(ids);
    return rc;
}

int trn_vocab_build(const char *const *texts, size_t n, size_t vocab_size,
                    const trn_vocab_opts *o, char ***tokens, size_t *ntok)
{
    assert((texts != NULL || n == 0) && tokens != NULL && ntok != NULL);
    static const trn_vocab_opts defaults = TRN_VOCAB_OPTS_INIT;
    if (o == NULL)
        o = &defaults;
    builder b;
    memset(&b, 0, sizeof b);
    wordbuf wb = {NULL, 0, 0, 0};
    int rc = ENC_OK;
    if (itable_init(&b.wtab, 1024) || itable_init(&b.stab, 256) || itable_init(&b.ptab, 1024)) {
        rc = ENC_NOMEM;
        goto done;
    }
    for (size_t i = 0; i < n && rc == ENC_OK; i++)
        rc = pretokenize(&b, texts[i], o->lower_case, &wb);
    if (rc == ENC_OK)
        rc = init_segments(&b);
    if (rc == ENC_OK)
        rc = push_alphabet(&b, o->ascii_alphabet, o->lower_case);
    int64_t min_count = o->min_count > (size_t)INT64_MAX ? INT64_MAX : (int64_t)o->min_count;
    while (rc == ENC_OK && 5 + b.nvocab < vocab_size) {
        size_t p = best_pair(&b, min_count);
        if (p == SIZE_MAX)
            break;
        int32_t x = b.pa[p], y = b.pb[p];
        size_t before = b.nsym;
        int32_t z = sym_id(&b, b.sym[x].s, b.sym[y].s + 2, b.sym[y].len - 2);
        if (z < 0) {
            rc = ENC_NOMEM;
            break;
        }
        if (b.nsym > before) /* a new token; else an old one made another way */
            rc = vocab_push(&b, z);
        if (rc == ENC_OK)
            rc = apply_merge(&b, x, y, z);
    }
    if (rc != ENC_OK)
        goto done;

    size_t total = 5 + b.nvocab;
    char **out = calloc(total, sizeof *out);
    if (out == NULL) {
        rc = ENC_NOMEM;
        goto done;
    }
    for (size_t i = 0; i < total; i++) {
        const char *s = i < 5 ? SPECIALS[i] : b.sym[b.vocab[i - 5]].s;
        if ((out[i] = dup_bytes(s, strlen(s), "", 0)) == NULL) {
            trn_vocab_free(out, i);
            rc = ENC_NOMEM;
            goto done;
        }
    }
    *tokens = out;
    *ntok = total;
done:
    free(wb.s);
    builder_free(&b);
    return rc;
}

void trn_vocab_free(char **tokens, size_t ntok)
{
    if (tokens == NULL)
        return;
    for (size_t i = 0; i < ntok; i++)
        free(tokens[i]);
    free(tokens);
}

int trn_vocab_write(const char *path, const char *const *tokens, size_t ntok, char *errbuf,
                    size_t errlen)
{
    assert(path != NULL && (tokens != NULL || ntok == 0));
    for (size_t i = 0; i < ntok; i++) {
        if (strpbrk(tokens[i], "\n\r") != NULL) {
            if (errbuf != NULL && errlen > 0)
                snprintf(errbuf, errlen, "%s: token %zu holds a line break", path, i);
            return ENC_INVAL;
        }
    }
    size_t pl = strlen(path);
    char *tmp = malloc(pl + sizeof ".tmp.XXXXXX");
    if (tmp == NULL) {
        if (errbuf != NULL && errlen > 0)
            snprintf(errbuf, errlen, "%s: out of memory", path);
        return ENC_NOMEM;
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp.XXXXXX", sizeof ".tmp.XXXXXX");
    int fd = mkstemp(tmp);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    int ok = f != NULL;
    if (fd >= 0 && f == NULL)
        close(fd);
    for (size_t i = 0; ok && i < ntok; i++)
        ok = fputs(tokens[i], f) >= 0 && fputc('\n', f) != EOF;
    if (f != NULL) {
        ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
        ok = fclose(f) == 0 && ok;
    }
    ok = ok && rename(tmp, path) == 0;
    int err = errno;
    if (!ok) {
        if (fd >= 0)
            unlink(tmp);
        if (errbuf != NULL && errlen > 0)
            snprintf(errbuf, errlen, "%s: %s", path, strerror(err));
    }
    free(tmp);
    return ok ? ENC_OK : ENC_IO;
}
