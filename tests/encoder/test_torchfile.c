/* PyTorch checkpoints (encoder/torchfile.h) against files torch itself
 * saved (tests/fixtures/make_torch_fixtures.py): every tensor's shape and
 * values as expected.json says (float16, bfloat16, int64, bool, strided
 * views, storage offsets, shared storages, a Parameter, nested dicts); the
 * legacy format and pickles that would run code are refused, and nothing
 * runs; every cut of a checkpoint is refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "encoder/encoder.h"
#include "testutil.h"
#include "util/util.h"

static char *fx(const char *name) { return tu_fixture_at(__FILE__, "torch", name); }

static void check_against_expected(const enc_torch *t, const char *prefix)
{
    char *ep = fx("expected.json");
    size_t len;
    char *js = util_read_file(ep, &len);
    assert_non_null(js);
    cJSON *exp = cJSON_Parse(js);
    assert_non_null(exp);
    int seen = 0;
    for (cJSON *e = exp->child; e; e = e->next) {
        char want[256];
        snprintf(want, sizeof want, "%s%s", prefix, e->string);
        size_t i = 0;
        while (i < enc_torch_count(t) && strcmp(enc_torch_name(t, i), want))
            i++;
        if (i == enc_torch_count(t))
            fail_msg("tensor %s missing", want);
        cJSON *shape = cJSON_GetObjectItem(e, "shape"), *vals = cJSON_GetObjectItem(e, "values");
        assert_int_equal(enc_torch_rank(t, i), cJSON_GetArraySize(shape));
        size_t count = 1;
        for (int d = 0; d < cJSON_GetArraySize(shape); d++) {
            assert_int_equal(enc_torch_shape(t, i)[d], cJSON_GetArrayItem(shape, d)->valueint);
            count *= (size_t)enc_torch_shape(t, i)[d];
        }
        float *v = malloc((count ? count : 1) * sizeof *v);
        char err[512];
        assert_int_equal(enc_torch_get_f32(t, i, v, err, sizeof err), 0);
        for (size_t k = 0; k < count; k++) {
            double w = cJSON_GetArrayItem(vals, (int)k)->valuedouble;
            if (!(fabs(v[k] - w) <= 1e-6 * fabs(w) + 1e-7))
                fail_msg("%s[%zu]: %.9g, want %.9g", want, k, v[k], w);
        }
        free(v);
        seen++;
    }
    printf("# %d tensors match (%s)\n", seen, prefix[0] ? prefix : "flat");
    assert_true(seen >= 10);
    cJSON_Delete(exp);
    free(js);
    free(ep);
}

static void test_small(void **state)
{
    (void)state;
    char *p = fx("small.pt"), err[512];
    enc_torch *t;
    int rc = enc_torch_open(p, &t, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    check_against_expected(t, "");
    /* dtypes as stored */
    for (size_t i = 0; i < enc_torch_count(t); i++) {
        const char *n = enc_torch_name(t, i), *d = enc_torch_dtype(t, i);
        if (!strcmp(n, "half"))
            assert_string_equal(d, "F16");
        if (!strcmp(n, "bf16"))
            assert_string_equal(d, "BF16");
        if (!strcmp(n, "position_ids"))
            assert_string_equal(d, "I64");
        if (!strcmp(n, "mask"))
            assert_string_equal(d, "BOOL");
    }
    enc_torch_close(t);
    free(p);
}

static void test_nested(void **state)
{
    (void)state;
    char *p = fx("nested.pt"), err[512];
    enc_torch *t;
    assert_int_equal(enc_torch_open(p, &t, err, sizeof err), 0);
    check_against_expected(t, "state_dict.");
    assert_int_equal(enc_torch_skipped(t), 2); /* epoch, note */
    enc_torch_close(t);
    free(p);
}

/* to safetensors, and back through the safetensors reader */
static void test_to_safetensors(void **state)
{
    (void)state;
    char *p = fx("small.pt"), err[512], *dir = tu_mkdtemp(), *out = tu_path(dir, "w.safetensors");
    assert_int_equal(enc_torch_to_safetensors(p, out, err, sizeof err), 0);
    enc_st *st;
    assert_int_equal(enc_st_open(out, &st, err, sizeof err), 0);
    enc_st_info info;
    assert_int_equal(enc_st_info_get(st, "transposed", &info), 0);
    assert_int_equal(info.rank, 2);
    assert_int_equal(info.shape[0], 3);
    assert_int_equal(info.shape[1], 4);
    const float *v;
    int64_t shape[2] = {3, 4};
    assert_int_equal(enc_st_get(st, "transposed", 2, shape, &v, err, sizeof err), 0);
    /* base = arange(12).reshape(4, 3) / 7; transposed[r][c] = base[c][r] */
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++)
            assert_float_equal(v[r * 4 + c], (float)(c * 3 + r) / 7.0f, 1e-6);
    enc_st_close(st);
    tu_rmtree(dir);
    free(out);
    free(dir);
    free(p);
}

/* Pickles that would run code are refused by the global they name, and
 * nothing runs; the legacy format is refused with what to do. */
static void test_refusals(void **state)
{
    (void)state;
    unlink("/tmp/medsem-pwned-system");
    unlink("/tmp/medsem-pwned-eval");
    static const struct {
        const char *file, *says;
        int code;
    } cases[] = {
        {"evil_system.pt", "global posix.system", ENC_UNSUPPORTED},
        {"evil_eval.pt", ".eval is not something a state dict uses", ENC_UNSUPPORTED},
        {"legacy.pt", "legacy (before 1.6) format", ENC_UNSUPPORTED},
        {"expected.json", "not a PyTorch checkpoint", ENC_FORMAT},
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char *p = fx(cases[c].file), err[512] = "";
        enc_torch *t = NULL;
        int rc = enc_torch_open(p, &t, err, sizeof err);
        printf("# %s: %s\n", cases[c].file, err);
        assert_int_equal(rc, cases[c].code);
        assert_null(t);
        assert_non_null(strstr(err, cases[c].says));
        free(p);
    }
    struct stat sb;
    assert_int_not_equal(stat("/tmp/medsem-pwned-system", &sb), 0);
    assert_int_not_equal(stat("/tmp/medsem-pwned-eval", &sb), 0);
}

/* Every cut of a checkpoint is refused, never a crash; byte flips are
 * refused or read (a flip in a value the reader does not use). */
static void test_damage(void **state)
{
    (void)state;
    char *p = fx("small.pt"), err[512];
    size_t len;
    unsigned char *b = (unsigned char *)util_read_file(p, &len);
    assert_non_null(b);
    int refused = 0;
    for (size_t cut = 0; cut < len; cut += 7) {
        enc_torch *t = NULL;
        if (enc_torch_open_mem(b, cut, "cut.pt", &t, err, sizeof err) == ENC_OK)
            fail_msg("small.pt cut at %zu of %zu was accepted", cut, len);
        refused++;
    }
    for (size_t at = 0; at < len; at += 5) {
        b[at] ^= 0xa5;
        enc_torch *t = NULL;
        if (enc_torch_open_mem(b, len, "flip.pt", &t, err, sizeof err) == ENC_OK)
            enc_torch_close(t);
        else
            refused++;
        b[at] ^= 0xa5;
    }
    printf("# %d cuts and flips of small.pt refused\n", refused);
    free(b);
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_small),   cmocka_unit_test(test_nested),
        cmocka_unit_test(test_to_safetensors), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_damage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
