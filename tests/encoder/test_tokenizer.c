/* test_tokenizer.c - the BERT WordPiece tokenizer against HF's own output.
 *
 * tests/fixtures/tokenizer/cases.tsv holds the ids transformers' slow
 * BertTokenizer gave for a few hundred texts (accents, dashes, CJK, emoji,
 * controls, special tokens, truncation, and random strings over the
 * characters that stress each step), under each option set; every one must
 * match id for id.  The fixtures are written by
 * tests/fixtures/make_tokenizer_fixtures.py, so this test needs no Python.
 * The rest covers what HF cannot show: vocabulary errors, invalid UTF-8,
 * max_len edges and hostile input sizes.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "encoder/tokenizer.h"
#include "testutil.h"

/* ---- helpers ------------------------------------------------------------------ */

/* tests/fixtures/tokenizer/name: from $top_srcdir when make check sets it,
 * else next to this source file.  malloc'd. */
static char *fixture_path(const char *name)
{
    char *p = tu_fixture("tokenizer", name);
    assert_non_null(p);
    return p;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        fail_msg("cannot open %s (set top_srcdir to the source tree)", path);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    assert_non_null(buf);
    size_t got;
    while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
        n += got;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
            assert_non_null(buf);
        }
    }
    fclose(f);
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return buf;
}

static void write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

static enc_tok *load_fixture(int lower, int strip, int cjk)
{
    char *path = fixture_path("vocab.txt");
    enc_tok_opts o = {lower, strip, cjk};
    enc_tok *t = NULL;
    char err[512];
    int rc = enc_tok_load(path, &o, &t, err, sizeof err);
    if (rc)
        fail_msg("%s (set top_srcdir to the source tree)", err);
    free(path);
    return t;
}

static size_t put_utf8(uint32_t c, char *out)
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

/* Undoes the fixture escapes (\\ \t \n \r \u{HEX}) in place. */
static void unescape(char *s)
{
    char *w = s;
    while (*s) {
        if (*s != '\\') {
            *w++ = *s++;
            continue;
        }
        s++;
        switch (*s) {
        case '\\': *w++ = '\\'; s++; break;
        case 't': *w++ = '\t'; s++; break;
        case 'n': *w++ = '\n'; s++; break;
        case 'r': *w++ = '\r'; s++; break;
        case 'u': {
            assert_int_equal(s[1], '{');
            char *end;
            unsigned long c = strtoul(s + 2, &end, 16);
            assert_int_equal(*end, '}');
            assert_true(c > 0 && c <= 0x10FFFF);
            w += put_utf8((uint32_t)c, w); /* never longer than "\u{..}" */
            s = end + 1;
            break;
        }
        default: fail_msg("bad escape \\%c in cases.tsv", *s);
        }
    }
    *w = '\0';
}

/* ---- the HF fixtures --------------------------------------------------------------- */

static void test_fixture_cases(void **state)
{
    (void)state;
    char *path = fixture_path("cases.tsv");
    char *buf = slurp(path, NULL);
    free(path);

    enc_tok *toks[2][3][2] = {{{NULL}}}; /* [lower][strip + 1][cjk], loaded on demand */
    size_t ncases = 0, nfail = 0, lineno = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        if (line[0] == '#')
            continue;
        char *f[8];
        char *p = line;
        for (int i = 0; i < 8; i++) {
            f[i] = p;
            p = strchr(p, '\t');
            if (i < 7) {
                if (p == NULL)
                    fail_msg("cases.tsv:%zu: want 8 columns", lineno);
                *p++ = '\0';
            }
        }
        int lower = atoi(f[0]), strip = atoi(f[1]), cjk = atoi(f[2]);
        size_t max_len = strtoul(f[3], NULL, 10), want_n = strtoul(f[4], NULL, 10);
        assert_true(lower >= 0 && lower <= 1 && strip >= -1 && strip <= 1 && cjk >= 0 && cjk <= 1);
        assert_true(max_len >= 2 && want_n <= max_len);
        unescape(f[5]);
        enc_tok **t = &toks[lower][strip + 1][cjk];
        if (*t == NULL)
            *t = load_fixture(lower, strip, cjk);

        int32_t *want = malloc(max_len * sizeof *want);
        int32_t *ids = malloc(max_len * sizeof *ids);
        int32_t *mask = malloc(max_len * sizeof *mask);
        assert_true(want && ids && mask);
        char *q = f[6];
        for (size_t i = 0; i < want_n; i++)
            want[i] = (int32_t)strtol(q, &q, 10);
        for (size_t i = want_n; i < max_len; i++)
            want[i] = enc_tok_id(*t, "[PAD]");

        size_t n = 0;
        char err[256];
        int rc = enc_tok_encode(*t, f[5], max_len, ids, mask, &n, err, sizeof err);
        int ok = rc == 0 && n == want_n;
        for (size_t i = 0; ok && i < max_len; i++)
            ok = ids[i] == want[i] && mask[i] == (i < want_n);
        if (!ok) {
            nfail++;
            print_error("cases.tsv:%zu (lower %d strip %d cjk %d max_len %zu): rc %d n %zu, "
                        "want n %zu\n  want:", lineno, lower, strip, cjk, max_len, rc, n, want_n);
            for (size_t i = 0; i < want_n; i++)
                print_error(" %d", want[i]);
            print_error("\n  got: ");
            for (size_t i = 0; rc == 0 && i < n; i++)
                print_error(" %d", ids[i]);
            print_error("\n  HF tokens: %s\n", f[7]);
        }
        ncases++;
        free(want);
        free(ids);
        free(mask);
    }
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 2; c++)
                enc_tok_free(toks[a][b][c]);
    free(buf);
    print_message("%zu of %zu HF cases match\n", ncases - nfail, ncases);
    assert_true(ncases >= 800);
    assert_int_equal(nfail, 0);
}

/* ---- the vocabulary --------------------------------------------------------------- */

static void test_vocab_lookup(void **state)
{
    (void)state;
    enc_tok *t = load_fixture(1, -1, 1);
    assert_int_equal(enc_tok_vocab_size(t), 347);
    assert_int_equal(enc_tok_id(t, "[PAD]"), 0);
    assert_int_equal(enc_tok_id(t, "[UNK]"), 1);
    assert_int_equal(enc_tok_id(t, "[CLS]"), 2);
    assert_int_equal(enc_tok_id(t, "[SEP]"), 3);
    assert_int_equal(enc_tok_id(t, "[MASK]"), 4);
    assert_string_equal(enc_tok_token(t, 2), "[CLS]");
    assert_string_equal(enc_tok_token(t, 346), "lobe");
    assert_int_equal(enc_tok_id(t, "lobe"), 346); /* repeated: the last line wins */
    int32_t first = -1;
    for (int32_t i = 0; i < 346 && first < 0; i++)
        if (strcmp(enc_tok_token(t, i), "lobe") == 0)
            first = i;
    assert_true(first > 0); /* the earlier line keeps its text */
    int32_t empty = enc_tok_id(t, "");
    assert_true(empty > 0); /* an empty line takes an id */
    assert_string_equal(enc_tok_token(t, empty), "");
    assert_int_equal(enc_tok_id(t, "##ule") > 0, 1);
    assert_string_equal(enc_tok_token(t, enc_tok_id(t, "ångström")), "ångström");
    assert_int_equal(enc_tok_id(t, "nodule"), -1);
    assert_null(enc_tok_token(t, -1));
    assert_null(enc_tok_token(t, 347));
    enc_tok_free(t);
    enc_tok_free(NULL);
}

static void test_vocab_line_ends(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    char *p = tu_path(dir, "vocab.txt");
    char err[512];
    enc_tok *t = NULL;
    /* \n, \r\n and a lone \r all end a line (Python's universal newlines);
     * spaces are kept; the last line needs no end. */
    static const char mixed[] = "[PAD]\r\n[UNK]\r[CLS]\n\n[SEP]\r\n a \r\nx\r\n\r\nlast";
    write_file(p, mixed, sizeof mixed - 1);
    assert_int_equal(enc_tok_load(p, NULL, &t, err, sizeof err), 0);
    assert_int_equal(enc_tok_vocab_size(t), 9);
    assert_int_equal(enc_tok_id(t, "[UNK]"), 1);
    assert_int_equal(enc_tok_id(t, "[CLS]"), 2);
    assert_int_equal(enc_tok_id(t, "[SEP]"), 4);
    assert_int_equal(enc_tok_id(t, " a "), 5);
    assert_int_equal(enc_tok_id(t, "x"), 6);
    assert_int_equal(enc_tok_id(t, ""), 7); /* the later of two empty lines */
    assert_int_equal(enc_tok_id(t, "last"), 8);
    assert_int_equal(enc_tok_id(t, "x\r"), -1);
    assert_string_equal(enc_tok_token(t, 3), "");
    /* No [MASK]: "[MASK]" in text gives [UNK] (HF: an id past the table). */
    int32_t ids[5], mask[5];
    size_t n;
    assert_int_equal(enc_tok_encode(t, "[MASK] x", 5, ids, mask, &n, err, sizeof err), 0);
    assert_int_equal(n, 4);
    int32_t want[5] = {2, 1, 6, 4, 0};
    assert_memory_equal(ids, want, sizeof want);
    enc_tok_free(t);

    /* A trailing \r\n or \r adds no line. */
    write_file(p, "[PAD]\r[UNK]\r[CLS]\r[SEP]\r", 24);
    assert_int_equal(enc_tok_load(p, NULL, &t, err, sizeof err), 0);
    assert_int_equal(enc_tok_vocab_size(t), 4);
    enc_tok_free(t);
    write_file(p, "[PAD]\n[UNK]\n[CLS]\n[SEP]\r\n", 25);
    assert_int_equal(enc_tok_load(p, NULL, &t, err, sizeof err), 0);
    assert_int_equal(enc_tok_vocab_size(t), 4);
    enc_tok_free(t);

    tu_rmtree(dir);
    free(p);
    free(dir);
}

static void test_vocab_errors(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    char *p = tu_path(dir, "vocab.txt");
    char err[512];
    enc_tok *t = (enc_tok *)&t; /* must stay untouched on failure */
    enc_tok *const sentinel = t;

    assert_int_equal(enc_tok_load(p, NULL, &t, err, sizeof err), ENC_IO);
    assert_non_null(strstr(err, p));
    assert_ptr_equal(t, sentinel);
    assert_int_equal(enc_tok_load(dir, NULL, &t, err, sizeof err), ENC_IO); /* a directory */

    write_file(p, "", 0);
    assert_int_equal(enc_tok_load(p, NULL, &t, err, sizeof err), ENC_FORMAT);
    assert_non_null(strstr(err, "empty"));
    assert_non_null(strstr(err, p));

    static const char no_unk[] = "[PAD]\n[CLS]\n[SEP]\n[MASK]\n";
    write_file(p, no_unk, sizeof no_unk - 1);
    assert_int_equal(enc_tok_load(p, NULL, &t, err, sizeof err), ENC_MISSING);
    assert_non_null(strstr(err, "[UNK]"));
    assert_non_null(strstr(err, p));

    static const char no_sep[] = "[PAD]\n[UNK]\n[CLS]\n";
    write_file(p, no_sep, sizeof no_sep - 1);
    assert_int_equal(enc_tok_load(p, NULL, &t, err, sizeof err), ENC_MISSING);
    assert_non_null(strstr(err, "[SEP]"));

    static const char bom[] = "\xEF\xBB\xBF[PAD]\n[UNK]\n[CLS]\n[SEP]\n";
    write_file(p, bom, sizeof bom - 1);
    assert_int_equal(enc_tok_load(p, NULL, &t, err, sizeof err), ENC_MISSING);
    assert_non_null(strstr(err, "[PAD]"));
    assert_non_null(strstr(err, "byte-order mark"));

    static const char bad_utf8[] = "[PAD]\n[UNK]\nab\xC3(\n[CLS]\n[SEP]\n";
    write_file(p, bad_utf8, sizeof bad_utf8 - 1);
    assert_int_equal(enc_tok_load(p, NULL, &t, err, sizeof err), ENC_FORMAT);
    assert_non_null(strstr(err, ":3:"));
    assert_non_null(strstr(err, "byte 3"));

    static const char nul[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\na\0b\n";
    write_file(p, nul, sizeof nul - 1);
    assert_int_equal(enc_tok_load(p, NULL, &t, err, sizeof err), ENC_FORMAT);
    assert_non_null(strstr(err, ":5:"));

    static const char ok[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n";
    write_file(p, ok, sizeof ok - 1);
    enc_tok_opts bad[] = {{2, -1, 1}, {1, 2, 1}, {1, -2, 1}, {1, -1, -1}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(enc_tok_load(p, &bad[i], &t, err, sizeof err), ENC_INVAL);
    assert_ptr_equal(t, sentinel);
    /* No error buffer is fine. */
    assert_int_equal(enc_tok_load(p, &bad[0], &t, NULL, 0), ENC_INVAL);
    assert_int_equal(enc_tok_load(p, NULL, &t, NULL, 0), 0);
    assert_int_equal(enc_tok_vocab_size(t), 4);
    enc_tok_free(t);

    tu_rmtree(dir);
    free(p);
    free(dir);
}

/* ---- encoding ------------------------------------------------------------------- */

static void test_invalid_utf8(void **state)
{
    (void)state;
    enc_tok *t = load_fixture(1, -1, 1);
    static const struct {
        const char *s;
        size_t at;
    } bad[] = {
        {"ok \x80", 3},               /* a lone continuation byte */
        {"\xC0\x80", 0},              /* overlong NUL */
        {"ab\xC1\xBF", 2},            /* overlong '\x7f' */
        {"\xE0\x80\x80", 0},          /* overlong, three bytes */
        {"x\xED\xA0\x80y", 1},        /* a surrogate, U+D800 */
        {"\xF0\x80\x80\x80", 0},      /* overlong, four bytes */
        {"\xF4\x90\x80\x80", 0},      /* past U+10FFFF */
        {"\xF5\x80\x80\x80", 0},      /* lead byte past U+10FFFF */
        {"nodule \xE2\x82", 7},       /* truncated at the end */
        {"\xE2\x82x", 0},             /* truncated before ASCII */
        {"\xFF", 0},
        {"caf\xC3\xA9 \xC3", 6},      /* valid é, then a cut one */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int32_t ids[8], mask[8];
        for (int k = 0; k < 8; k++)
            ids[k] = mask[k] = -7;
        size_t n = 99;
        char err[256] = "";
        char want[64];
        assert_int_equal(enc_tok_encode(t, bad[i].s, 8, ids, mask, &n, err, sizeof err),
                         ENC_INVAL);
        snprintf(want, sizeof want, "offset %zu ", bad[i].at);
        if (strstr(err, want) == NULL)
            fail_msg("case %zu: \"%s\" does not name %s", i, err, want);
        assert_int_equal(n, 99); /* outputs untouched */
        for (int k = 0; k < 8; k++)
            assert_true(ids[k] == -7 && mask[k] == -7);
    }
    /* The error buffer is optional. */
    int32_t ids[4], mask[4];
    size_t n;
    assert_int_equal(enc_tok_encode(t, "\x80", 4, ids, mask, &n, NULL, 0), ENC_INVAL);
    /* Every code point class that is valid passes: U+10FFFF, U+E000, U+FFFF. */
    assert_int_equal(enc_tok_encode(t, "\xF4\x8F\xBF\xBF\xEE\x80\x80\xEF\xBF\xBF", 4, ids, mask,
                                    &n, NULL, 0),
                     0);
    assert_int_equal(n, 2); /* all three are C*: dropped */
    enc_tok_free(t);
}

static void expect_ids(const enc_tok *t, const char *text, size_t max_len, const int32_t *want,
                       size_t want_n)
{
    int32_t ids[64], mask[64];
    size_t n = 0;
    char err[256];
    assert_true(max_len <= 64);
    int rc = enc_tok_encode(t, text, max_len, ids, mask, &n, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    assert_int_equal(n, want_n);
    for (size_t i = 0; i < max_len; i++) {
        if (i < want_n)
            assert_int_equal(ids[i], want[i]);
        else
            assert_int_equal(ids[i], enc_tok_id(t, "[PAD]"));
        assert_int_equal(mask[i], i < want_n);
    }
}

static void test_max_len(void **state)
{
    (void)state;
    enc_tok *t = load_fixture(1, -1, 1);
    int32_t cls = enc_tok_id(t, "[CLS]"), sep = enc_tok_id(t, "[SEP]");
    int32_t eight = enc_tok_id(t, "8"), mm = enc_tok_id(t, "mm"), nod = enc_tok_id(t, "nod"),
            ule = enc_tok_id(t, "##ule");

    /* [CLS] [SEP] only: HF leaves such a sequence untruncated (longer than
     * max_len) and logs an error; we cannot, and keep the two specials. */
    int32_t w2[] = {cls, sep};
    expect_ids(t, "8 mm nodule", 2, w2, 2);
    expect_ids(t, "", 2, w2, 2);
    int32_t w3[] = {cls, eight, sep};
    expect_ids(t, "8 mm nodule", 3, w3, 3);
    int32_t w6[] = {cls, eight, mm, nod, ule, sep};
    expect_ids(t, "8 mm nodule", 6, w6, 6); /* exactly fits: no padding */
    expect_ids(t, "8 mm nodule", 7, w6, 6); /* one [PAD] */
    int32_t w5[] = {cls, eight, mm, nod, sep};
    expect_ids(t, "8 mm nodule", 5, w5, 5); /* cut between a word's pieces */

    int32_t ids[2], mask[2];
    size_t n = 5;
    char err[128];
    assert_int_equal(enc_tok_encode(t, "x", 1, ids, mask, &n, err, sizeof err), ENC_INVAL);
    assert_int_equal(enc_tok_encode(t, "x", 0, ids, mask, &n, err, sizeof err), ENC_INVAL);
    assert_int_equal(n, 5);
    enc_tok_free(t);
}

/* Long input: a word far past 100 code points, long runs of combining
 * marks (the canonical ordering of a run is linear, not quadratic), and
 * truncation stopping early in a large text. */
static void test_large_inputs(void **state)
{
    (void)state;
    enc_tok *t = load_fixture(1, -1, 1);
    enc_tok *cased = load_fixture(0, 0, 1);
    int32_t cls = enc_tok_id(t, "[CLS]"), sep = enc_tok_id(t, "[SEP]"),
            unk = enc_tok_id(t, "[UNK]"), a = enc_tok_id(t, "a");

    size_t big = (size_t)1 << 22;
    char *s = malloc(big + 1);
    assert_non_null(s);
    memset(s, 'a', big);
    s[big] = '\0';
    int32_t wu[] = {cls, unk, sep};
    expect_ids(t, s, 8, wu, 3);

    /* "a" then 2^19 alternating marks: strip gives "a"; without stripping
     * the word stays far over 100 code points. */
    size_t marks = (size_t)1 << 19, k = 0;
    s[k++] = 'a';
    for (size_t i = 0; i < marks; i++)
        k += put_utf8(i % 2 ? 0x0301 : 0x0323, s + k);
    s[k] = '\0';
    int32_t wa[] = {cls, a, sep};
    expect_ids(t, s, 8, wa, 3);
    expect_ids(cased, s, 8, wu, 3);

    /* Many words: only the first max_len - 2 matter. */
    k = 0;
    while (k + 3 < big) {
        memcpy(s + k, "a, ", 3);
        k += 3;
    }
    s[k] = '\0';
    int32_t comma = enc_tok_id(t, ",");
    int32_t wm[] = {cls, a, comma, a, comma, a, comma, a, sep};
    expect_ids(t, s, 9, wm, 9);
    free(s);
    enc_tok_free(cased);
    enc_tok_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_cases),   cmocka_unit_test(test_vocab_lookup),
        cmocka_unit_test(test_vocab_line_ends), cmocka_unit_test(test_vocab_errors),
        cmocka_unit_test(test_invalid_utf8),    cmocka_unit_test(test_max_len),
        cmocka_unit_test(test_large_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
