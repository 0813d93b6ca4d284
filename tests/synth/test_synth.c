/* test_synth.c - cmocka tests for synth/synth.h, the built-in chest
 * benchmark: the random generator, the label vocabulary, reports (every
 * label mentioned, no negation contradicting one), volumes read back
 * through imageio/imageio.h (orientation for RAS and LPS storage, HU per
 * tissue, findings where the labels say), radiographs (16-bit, anatomy
 * the right way round), rescans, and whole datasets (byte-identical for a
 * seed whatever the thread count; manifests that parse, with pairs and
 * rescans that agree with what they point at).
 *
 * Volume checks read the NIfTI files with img_read_nifti, so they see
 * what a user of the benchmark sees: volumes reoriented to RAS+ (+x =
 * patient right, +y anterior, +z superior).  World positions of anatomy
 * come from the study's landmarks; several checks are also made without
 * them (lung volumes per side, fluid per side). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "imageio/imageio.h"
#include "synth/synth.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <math.h>
#include <nifti2_io.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------- */

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    unsigned char *b = malloc((size_t)len + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    b[len] = 0;
    *n = (size_t)len;
    return b;
}

static int same_file(const char *a, const char *b)
{
    size_t na, nb;
    unsigned char *x = slurp(a, &na), *y = slurp(b, &nb);
    int same = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return same;
}

static const synth_opts OPTS_DEFAULT = {0};

static synth_findings one(synth_finding f, synth_location l, int size_mm, int count,
                              int grade)
{
    synth_findings F;
    memset(&F, 0, sizeof F);
    F.n = 1;
    F.label[0] = (synth_label){f, l, size_mm, count, grade};
    return F;
}

static void make(const synth_findings *F, uint64_t ps, uint64_t as, unsigned kinds, int storage,
                 double noise, synth_study *s)
{
    synth_req rq = {ps, as, kinds, F, storage, noise};
    char err[256] = "";
    int rc = synth_study_make(&OPTS_DEFAULT, &rq, s, err, sizeof err);
    if (rc)
        fail_msg("synth_study_make: %s", err);
}

/* Writes the study's volume to dir/name and reads it back through the
 * encoder's NIfTI reader (RAS+). */
static void roundtrip(const char *dir, const char *name, const synth_study *s, img_vol *v)
{
    char *p = tu_path(dir, name), err[256] = "";
    assert_int_equal(synth_write_nifti(s, p, err, sizeof err), SYNTH_OK);
    int rc = img_read_nifti(p, NULL, v, err, sizeof err);
    if (rc)
        fail_msg("img_read_nifti: %s", err);
    free(p);
}

/* World (RAS mm) to the nearest voxel index of a read volume. */
static void world_to_vox(const img_vol *v, const double w[3], int ijk[3])
{
    double a[3][3], d[3], inv[3][3];
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 3; j++)
            a[i][j] = v->affine[i][j];
        d[i] = w[i] - v->affine[i][3];
    }
    double det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1]) -
                 a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0]) +
                 a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    inv[0][0] = (a[1][1] * a[2][2] - a[1][2] * a[2][1]) / det;
    inv[0][1] = (a[0][2] * a[2][1] - a[0][1] * a[2][2]) / det;
    inv[0][2] = (a[0][1] * a[1][2] - a[0][2] * a[1][1]) / det;
    inv[1][0] = (a[1][2] * a[2][0] - a[1][0] * a[2][2]) / det;
    inv[1][1] = (a[0][0] * a[2][2] - a[0][2] * a[2][0]) / det;
    inv[1][2] = (a[0][2] * a[1][0] - a[0][0] * a[1][2]) / det;
    inv[2][0] = (a[1][0] * a[2][1] - a[1][1] * a[2][0]) / det;
    inv[2][1] = (a[0][1] * a[2][0] - a[0][0] * a[2][1]) / det;
    inv[2][2] = (a[0][0] * a[1][1] - a[0][1] * a[1][0]) / det;
    for (int i = 0; i < 3; i++)
        ijk[i] = (int)lround(inv[i][0] * d[0] + inv[i][1] * d[1] + inv[i][2] * d[2]);
}

static void vox_to_world(const img_vol *v, int i, int j, int k, double w[3])
{
    for (int r = 0; r < 3; r++)
        w[r] = v->affine[r][0] * i + v->affine[r][1] * j + v->affine[r][2] * k + v->affine[r][3];
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median HU of the 3x3x3 voxels around a world point (inside the volume). */
static float median_at(const img_vol *v, const double w[3])
{
    int c[3];
    world_to_vox(v, w, c);
    assert_true(c[0] >= 1 && c[0] < v->nx - 1 && c[1] >= 1 && c[1] < v->ny - 1 && c[2] >= 1 &&
                c[2] < v->nz - 1);
    float s[27];
    int n = 0;
    for (int dk = -1; dk <= 1; dk++)
        for (int dj = -1; dj <= 1; dj++)
            for (int di = -1; di <= 1; di++)
                s[n++] = v->data[((size_t)(c[2] + dk) * v->ny + c[1] + dj) * v->nx + c[0] + di];
    qsort(s, 27, sizeof *s, cmp_float);
    return s[13];
}

static float hu_at(const img_vol *v, const double w[3])
{
    int c[3];
    world_to_vox(v, w, c);
    assert_true(c[0] >= 0 && c[0] < v->nx && c[1] >= 0 && c[1] < v->ny && c[2] >= 0 &&
                c[2] < v->nz);
    return v->data[((size_t)c[2] * v->ny + c[1]) * v->nx + c[0]];
}

/* Voxels of a read volume with HU in [lo, hi] inside the thorax (within
 * an ellipse around the spine's column, away from the midline, above zmin
 * and behind ymax in world mm), counted per side of the patient: [0]
 * right (x > spine), [1] left. */
static void count_side_in(const img_vol *v, const synth_study *s, float lo, float hi,
                          double zmin, double ymax, size_t out[2])
{
    const double *sp = s->landmark_ras[SYNTH_LM_SPINE];
    out[0] = out[1] = 0;
    for (int k = 0; k < v->nz; k++)
        for (int j = 0; j < v->ny; j++)
            for (int i = 0; i < v->nx; i++) {
                float h = v->data[((size_t)k * v->ny + j) * v->nx + i];
                if (h < lo || h > hi)
                    continue;
                double w[3];
                vox_to_world(v, i, j, k, w);
                double dx = (w[0] - sp[0]) / 115, dy = (w[1] - sp[1] - 45) / 75;
                if (dx * dx + dy * dy > 1 || fabs(w[0] - sp[0]) < 30 || w[2] < zmin ||
                    w[1] > ymax)
                    continue;
                out[w[0] > sp[0] ? 0 : 1]++;
            }
}

static void count_side(const img_vol *v, const synth_study *s, float lo, float hi,
                       size_t out[2])
{
    count_side_in(v, s, lo, hi, -INFINITY, INFINITY, out);
}

/* ---- the report checker -------------------------------------------------------------- */

static int has(const char *s, const char *w) { return strstr(s, w) != NULL; }

static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

/* Splits a report into lower-case sentences (at ". ", ".\n", "\n"). */
static int sentences(const char *rep, char out[][400], int max)
{
    int n = 0;
    size_t len = strlen(rep), st = 0;
    for (size_t i = 0; i <= len && n < max; i++) {
        int end = i == len || rep[i] == '\n' ||
                  (rep[i] == '.' && (i + 1 == len || rep[i + 1] == ' ' || rep[i + 1] == '\n'));
        if (!end)
            continue;
        size_t m = i - st;
        if (m >= 400)
            m = 399;
        memcpy(out[n], rep + st, m);
        out[n][m] = 0;
        lower(out[n]);
        char *p = out[n];
        while (*p == ' ')
            p++;
        memmove(out[n], p, strlen(p) + 1);
        if (out[n][0])
            n++;
        st = i + 1;
    }
    return n;
}

static int negated(const char *s)
{
    return !strncmp(s, "no ", 3) || has(s, " no ") ||
           ((has(s, "heart") || has(s, "cardiac")) && has(s, "normal"));
}

static int mentions_finding(const char *s, int f)
{
    switch (f) {
    case SYNTH_NODULE: return has(s, "nodul");
    case SYNTH_MASS: return has(s, "mass");
    case SYNTH_EFFUSION: return has(s, "effusion") || has(s, "pleural fluid");
    case SYNTH_PNEUMOTHORAX: return has(s, "pneumothorax");
    case SYNTH_CONSOLIDATION: return has(s, "consolidation") || has(s, "airspace");
    case SYNTH_CARDIOMEGALY:
        return has(s, "cardiomegaly") ||
               ((has(s, "heart") || has(s, "cardiac")) && (has(s, "enlarged") || has(s, "normal")));
    case SYNTH_EMPHYSEMA: return has(s, "emphysem");
    case SYNTH_NORMAL: return has(s, "lungs are clear");
    default: return 0;
    }
}

static int mentions_location(const char *s, const synth_label *b)
{
    switch (b->location) {
    case SYNTH_LOC_RUL: return has(s, "right") && has(s, "upper");
    case SYNTH_LOC_RML: return has(s, "right") && (has(s, "middle") || has(s, "mid "));
    case SYNTH_LOC_RLL: return has(s, "right") && (has(s, "lower") || has(s, "base"));
    case SYNTH_LOC_LUL: return has(s, "left") && has(s, "upper");
    case SYNTH_LOC_LLL: return has(s, "left") && (has(s, "lower") || has(s, "base"));
    case SYNTH_LOC_RIGHT: return has(s, "right") || has(s, "bilateral");
    case SYNTH_LOC_LEFT: return has(s, "left") || has(s, "bilateral");
    default: return 1;
    }
}

static int label_of(const synth_findings *f, int finding, int loc)
{
    for (int i = 0; i < f->n; i++)
        if ((int)f->label[i].finding == finding && (loc < 0 || (int)f->label[i].location == loc))
            return 1;
    return 0;
}

/* Every label is mentioned (with its location and size) in a sentence
 * that is not a negation; no negation denies a label; at least one absent
 * finding is negated; a normal study says the lungs are clear. */
static void check_report(const char *rep, const synth_findings *f)
{
    char S[64][400];
    assert_non_null(strstr(rep, "Findings:"));
    assert_non_null(strstr(rep, "Impression:"));
    assert_true(strstr(rep, "Findings:") < strstr(rep, "Impression:"));
    int n = sentences(rep, S, 64);
    int imp = n; /* the first sentence of the impression */
    for (int i = 0; i < n && imp == n; i++)
        if (!strncmp(S[i], "impression:", 11))
            imp = i;
    for (int i = 0; i < imp; i++) /* nothing said twice in the findings */
        for (int j = 0; j < i; j++)
            if (!strcmp(S[i], S[j]))
                fail_msg("'%s' twice in:\n%s", S[i], rep);
    for (int l = 0; l < f->n; l++) {
        const synth_label *b = &f->label[l];
        char mm[32] = "", cm[32] = "";
        if (b->size_mm) {
            snprintf(mm, sizeof mm, "%d mm", b->size_mm);
            snprintf(cm, sizeof cm, "%.1f cm", b->size_mm / 10.0);
        }
        int found = 0;
        for (int i = 0; i < n && !found; i++)
            found = !negated(S[i]) && mentions_finding(S[i], b->finding) &&
                    mentions_location(S[i], b) && (!mm[0] || has(S[i], mm) || has(S[i], cm));
        if (!found)
            fail_msg("label (%s, %s) not mentioned in:\n%s", synth_finding_name(b->finding),
                     synth_location_name(b->location), rep);
    }
    int nneg = 0;
    for (int i = 0; i < n; i++) {
        if (!negated(S[i]))
            continue;
        for (int fi = SYNTH_NODULE; fi < SYNTH_NFINDINGS; fi++) {
            if (!mentions_finding(S[i], fi))
                continue;
            nneg++;
            int bad;
            if (fi == SYNTH_EFFUSION && (has(S[i], "right") || has(S[i], "left")))
                bad = label_of(f, fi, has(S[i], "right") ? SYNTH_LOC_RIGHT : SYNTH_LOC_LEFT);
            else
                bad = label_of(f, fi, -1);
            if (bad)
                fail_msg("negation '%s' contradicts a %s label in:\n%s", S[i],
                         synth_finding_name(fi), rep);
        }
        if (has(S[i], "lungs are clear"))
            fail_msg("'lungs are clear' is not a negation: %s", S[i]);
    }
    for (int i = 0; i < n; i++)
        if (has(S[i], "lungs are clear"))
            for (int fi = SYNTH_NODULE; fi <= SYNTH_CONSOLIDATION; fi++)
                if (label_of(f, fi, -1) || label_of(f, SYNTH_EMPHYSEMA, -1))
                    fail_msg("'lungs are clear' with a lung finding in:\n%s", rep);
    assert_true(nneg >= 1);
}

/* ---- random numbers ----------------------------------------------------------------- */

static void test_rng(void **state)
{
    (void)state;
    synth_rng a, b;
    synth_rng_seed(&a, 42);
    synth_rng_seed(&b, 42);
    for (int i = 0; i < 1000; i++)
        assert_true(synth_rng_u64(&a) == synth_rng_u64(&b));
    synth_rng_seed(&b, 43);
    assert_true(synth_rng_u64(&a) != synth_rng_u64(&b));
    double s = 0, s2 = 0, m = 0;
    int hist[7] = {0};
    for (int i = 0; i < 70000; i++) {
        double u = synth_rng_uniform(&a);
        assert_true(u >= 0 && u < 1);
        uint32_t k = synth_rng_below(&a, 7);
        assert_true(k < 7);
        hist[k]++;
        double z = synth_rng_normal(&a);
        s += z;
        s2 += z * z;
        m += u;
    }
    for (int k = 0; k < 7; k++)
        assert_true(hist[k] > 9400 && hist[k] < 10600);
    assert_true(fabs(m / 70000 - 0.5) < 0.01);
    assert_true(fabs(s / 70000) < 0.02);
    assert_true(fabs(s2 / 70000 - 1) < 0.03);
    assert_int_equal(synth_rng_below(&a, 1), 0);
}

/* ---- vocabulary --------------------------------------------------------------------- */

static void test_vocab(void **state)
{
    (void)state;
    assert_string_equal(synth_finding_name(SYNTH_EFFUSION), "pleural effusion");
    assert_string_equal(synth_location_name(SYNTH_LOC_RUL), "right upper lobe");
    assert_null(synth_finding_name(SYNTH_NFINDINGS));
    assert_null(synth_location_name(-1));
    assert_string_equal(synth_grade_name(SYNTH_EFFUSION, 1), "small");
    assert_string_equal(synth_grade_name(SYNTH_EMPHYSEMA, 3), "severe");
    assert_null(synth_grade_name(SYNTH_NODULE, 1));
    assert_true(synth_pair_valid(SYNTH_NODULE, SYNTH_LOC_LLL));
    assert_false(synth_pair_valid(SYNTH_NODULE, SYNTH_LOC_LEFT));
    assert_false(synth_pair_valid(SYNTH_EFFUSION, SYNTH_LOC_RUL));
    for (int m = 0; m < SYNTH_NLANDMARKS; m++)
        assert_non_null(synth_landmark_name(m));

    char buf[8192];
    assert_int_equal(synth_vocab_json(buf, sizeof buf), SYNTH_OK);
    cJSON *j = cJSON_Parse(buf);
    assert_non_null(j);
    cJSON *pairs = cJSON_GetObjectItem(j, "pairs");
    assert_true(cJSON_IsArray(pairs));
    int npairs = 0;
    for (int f = 0; f < SYNTH_NFINDINGS; f++)
        for (int l = 0; l < SYNTH_NLOCATIONS; l++)
            npairs += synth_pair_valid(f, l);
    assert_int_equal(cJSON_GetArraySize(pairs), npairs);
    assert_int_equal(npairs, 22);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "findings")), SYNTH_NFINDINGS);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(j, "locations")),
                     SYNTH_NLOCATIONS);
    cJSON_Delete(j);
    char small[16];
    assert_int_equal(synth_vocab_json(small, sizeof small), SYNTH_TOOBIG);
    assert_int_equal(strlen(small), sizeof small - 1);

    synth_findings F;
    memset(&F, 0, sizeof F);
    F.n = 2;
    F.label[0] = (synth_label){SYNTH_NODULE, SYNTH_LOC_RUL, 8, 2, 0};
    F.label[1] = (synth_label){SYNTH_EFFUSION, SYNTH_LOC_LEFT, 0, 1, 2};
    assert_int_equal(synth_labels_json(&F, buf, sizeof buf), SYNTH_OK);
    assert_string_equal(buf, "[{\"finding\":\"nodule\",\"location\":\"right upper lobe\","
                             "\"size_mm\":8,\"count\":2},{\"finding\":\"pleural effusion\","
                             "\"location\":\"left\",\"size\":\"moderate\"}]");
    assert_int_equal(synth_labels_json(&F, buf, 20), SYNTH_TOOBIG);
}

static void test_findings_check(void **state)
{
    (void)state;
    char err[256];
    synth_findings F = one(SYNTH_NODULE, SYNTH_LOC_RUL, 8, 1, 0);
    assert_int_equal(synth_findings_check(&F, err, sizeof err), SYNTH_OK);
    F.label[0].location = SYNTH_LOC_HEART;
    assert_int_equal(synth_findings_check(&F, err, sizeof err), SYNTH_INVAL);
    assert_non_null(strstr(err, "nodule"));
    F = one(SYNTH_NODULE, SYNTH_LOC_RUL, 31, 1, 0);
    assert_int_equal(synth_findings_check(&F, err, sizeof err), SYNTH_INVAL);
    assert_non_null(strstr(err, "size_mm"));
    F = one(SYNTH_EFFUSION, SYNTH_LOC_RIGHT, 0, 1, 4);
    assert_int_equal(synth_findings_check(&F, err, sizeof err), SYNTH_INVAL);
    F = one(SYNTH_MASS, SYNTH_LOC_LUL, 20, 1, 0);
    assert_int_equal(synth_findings_check(&F, err, sizeof err), SYNTH_INVAL);
    F = one(SYNTH_NORMAL, SYNTH_LOC_CHEST, 0, 1, 0);
    F.n = 2;
    F.label[1] = (synth_label){SYNTH_CARDIOMEGALY, SYNTH_LOC_HEART, 0, 1, 1};
    assert_int_equal(synth_findings_check(&F, err, sizeof err), SYNTH_INVAL);
    assert_non_null(strstr(err, "normal"));
    F = one(SYNTH_CARDIOMEGALY, SYNTH_LOC_HEART, 0, 1, 1);
    F.n = 2;
    F.label[1] = F.label[0];
    assert_int_equal(synth_findings_check(&F, err, sizeof err), SYNTH_INVAL);
    assert_non_null(strstr(err, "repeat"));
    F.n = 0;
    assert_int_equal(synth_findings_check(&F, err, sizeof err), SYNTH_INVAL);
    F.n = SYNTH_MAX_LABELS + 1;
    assert_int_equal(synth_findings_check(&F, err, sizeof err), SYNTH_INVAL);
    /* a bad forced set is refused by the generator too */
    F = one(SYNTH_PNEUMOTHORAX, SYNTH_LOC_LUL, 0, 1, 1);
    synth_req rq = {1, 1, SYNTH_VOLUME, &F, 0, 0};
    synth_study s;
    assert_int_equal(synth_study_make(&OPTS_DEFAULT, &rq, &s, err, sizeof err), SYNTH_INVAL);
    rq.findings = NULL;
    rq.kinds = 0;
    assert_int_equal(synth_study_make(&OPTS_DEFAULT, &rq, &s, err, sizeof err), SYNTH_INVAL);
    rq.kinds = 4;
    assert_int_equal(synth_study_make(&OPTS_DEFAULT, &rq, &s, err, sizeof err), SYNTH_INVAL);
    rq.kinds = SYNTH_VOLUME;
    rq.storage = 3;
    assert_int_equal(synth_study_make(&OPTS_DEFAULT, &rq, &s, err, sizeof err), SYNTH_INVAL);
}

/* ---- reports -------------------------------------------------------------------------- */

/* Random valid label sets (the test's own draw, not the library's). */
static void random_findings(tu_rng *r, synth_findings *F)
{
    memset(F, 0, sizeof *F);
    if (tu_rng_below(r, 5) == 0) {
        *F = one(SYNTH_NORMAL, SYNTH_LOC_CHEST, 0, 1, 0);
        return;
    }
    int want = 1 + (int)tu_rng_below(r, 4);
    for (int t = 0; t < 50 && F->n < want; t++) {
        synth_label b = {0};
        b.finding = (synth_finding)(1 + tu_rng_below(r, SYNTH_NFINDINGS - 1));
        b.location = (synth_location)tu_rng_below(r, SYNTH_NLOCATIONS);
        if (!synth_pair_valid(b.finding, b.location))
            continue;
        b.count = 1;
        if (b.finding == SYNTH_NODULE) {
            b.size_mm = 4 + (int)tu_rng_below(r, 27);
            b.count = 1 + (int)tu_rng_below(r, 3);
        }
        if (b.finding == SYNTH_MASS)
            b.size_mm = 30 + (int)tu_rng_below(r, 51);
        if (synth_grade_name(b.finding, 1))
            b.grade = 1 + (int)tu_rng_below(r, 3);
        int dup = 0;
        for (int i = 0; i < F->n; i++)
            dup |= F->label[i].finding == b.finding && F->label[i].location == b.location;
        if (!dup)
            F->label[F->n++] = b;
    }
    F->modality = (int)tu_rng_below(r, 2);
}

static void test_report(void **state)
{
    (void)state;
    tu_rng tr;
    tu_rng_seed(&tr, 7);
    synth_rng r;
    synth_rng_seed(&r, 99);
    char buf[4096];
    for (int it = 0; it < 3000; it++) {
        synth_findings F;
        random_findings(&tr, &F);
        assert_int_equal(synth_report(&F, &r, buf, sizeof buf), SYNTH_OK);
        check_report(buf, &F);
        if (F.label[0].finding == SYNTH_NORMAL) {
            char low[4096];
            snprintf(low, sizeof low, "%s", buf);
            lower(low);
            assert_non_null(strstr(low, "lungs are clear"));
        }
        for (const char *c = buf; *c; c++) /* printable ASCII and newlines only */
            assert_true(*c == '\n' || (*c >= 0x20 && *c < 0x7f));
    }
    /* the wording varies: many distinct reports for one label set */
    synth_findings F = one(SYNTH_NODULE, SYNTH_LOC_RUL, 12, 1, 0);
    char seen[40][4096];
    int distinct = 0;
    for (int i = 0; i < 40; i++) {
        assert_int_equal(synth_report(&F, &r, seen[i], sizeof seen[i]), SYNTH_OK);
        int dup = 0;
        for (int j = 0; j < i; j++)
            dup |= !strcmp(seen[i], seen[j]);
        distinct += !dup;
    }
    assert_true(distinct >= 30);
    /* measurements with units, articles right */
    int cm = 0, mm = 0;
    for (int i = 0; i < 40; i++) {
        cm += strstr(seen[i], "1.2 cm") != NULL;
        mm += strstr(seen[i], "12 mm") != NULL;
        assert_null(strstr(seen[i], "a 8"));
        assert_null(strstr(seen[i], "an 12"));
    }
    assert_true(cm > 0 && mm > 0);
    F = one(SYNTH_NODULE, SYNTH_LOC_LLL, 8, 1, 0);
    for (int i = 0; i < 30; i++) {
        assert_int_equal(synth_report(&F, &r, buf, sizeof buf), SYNTH_OK);
        assert_null(strstr(buf, "a 8 mm"));
        assert_null(strstr(buf, "A 8 mm"));
    }
    /* bad input and a short buffer */
    F.n = 0;
    assert_int_equal(synth_report(&F, &r, buf, sizeof buf), SYNTH_INVAL);
    assert_string_equal(buf, "");
    F = one(SYNTH_NORMAL, SYNTH_LOC_CHEST, 0, 1, 0);
    assert_int_equal(synth_report(&F, &r, buf, 30), SYNTH_TOOBIG);
    assert_int_equal(strlen(buf), 29);
}

/* ---- volumes ----------------------------------------------------------------------- */

static int setup_dir(void **state)
{
    char *d = tu_mkdtemp();
    *state = d;
    return d ? 0 : -1;
}

static int teardown_dir(void **state)
{
    tu_rmtree(*state);
    free(*state);
    return 0;
}

/* The same phantom and acquisition stored RAS and LPS: both read back to
 * the same RAS volume, with the anatomy on the right sides. */
static void test_orientation(void **state)
{
    const char *dir = *state;
    synth_findings F = one(SYNTH_NORMAL, SYNTH_LOC_CHEST, 0, 1, 0);
    for (uint64_t seed = 1; seed <= 3; seed++) {
        synth_study ras, lps;
        make(&F, seed, 100 + seed, SYNTH_VOLUME, SYNTH_STORE_RAS, -1, &ras);
        make(&F, seed, 100 + seed, SYNTH_VOLUME, SYNTH_STORE_LPS, -1, &lps);
        /* stored differently: LPS has negative x and y diagonals */
        assert_true(ras.affine[0][0] > 0 && ras.affine[1][1] > 0);
        assert_true(lps.affine[0][0] < 0 && lps.affine[1][1] < 0);
        assert_true(memcmp(ras.vol, lps.vol, (size_t)ras.nx * ras.ny * ras.nz * 2) != 0);
        img_vol a, b;
        roundtrip(dir, "ras.nii.gz", &ras, &a);
        roundtrip(dir, "lps.nii", &lps, &b);
        assert_int_equal(a.nx, b.nx);
        assert_int_equal(a.ny, b.ny);
        assert_int_equal(a.nz, b.nz);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
                assert_true(fabs(a.affine[i][j] - b.affine[i][j]) < 1e-3);
        size_t nv = (size_t)a.nx * a.ny * a.nz, diff = 0;
        for (size_t i = 0; i < nv; i++)
            diff += a.data[i] != b.data[i];
        assert_int_equal(diff, 0); /* no noise: the very same voxels */
        for (int which = 0; which < 2; which++) {
            const img_vol *v = which ? &b : &a;
            const synth_study *s = which ? &lps : &ras;
            const double *heart = s->landmark_ras[SYNTH_LM_HEART];
            const double *spine = s->landmark_ras[SYNTH_LM_SPINE];
            /* RAS+: the heart (patient's left) at smaller x than the
             * spine's column; the spine posterior (smaller y) */
            assert_true(heart[0] < spine[0] - 5);
            assert_true(spine[1] < heart[1] - 30);
            float hh = median_at(v, heart), hs = median_at(v, spine);
            assert_true(hh > 30 && hh < 60);
            assert_true(hs > 380);
            /* the voxel index grows toward the patient's right after reading */
            int ch[3], cs[3];
            world_to_vox(v, heart, ch);
            world_to_vox(v, spine, cs);
            assert_true(ch[0] < cs[0]);
            assert_true(cs[1] < ch[1]);
            /* without landmarks: the heart takes room from the left lung */
            size_t lung[2];
            count_side(v, s, -1000, -500, lung);
            assert_true(lung[0] > lung[1] * 1.05); /* each lung also varies by +-10% */
            assert_true(lung[1] > 1000);
            /* bone sits posterior on average (spine, posterior ribs) */
            double by = 0, ay = 0;
            size_t nb = 0, na = 0;
            for (int k = 0; k < v->nz; k++)
                for (int j = 0; j < v->ny; j++)
                    for (int i = 0; i < v->nx; i++) {
                        float h = v->data[((size_t)k * v->ny + j) * v->nx + i];
                        double w[3];
                        if (h > -500) {
                            vox_to_world(v, i, j, k, w);
                            ay += w[1];
                            na++;
                            if (h > 350) {
                                by += w[1];
                                nb++;
                            }
                        }
                    }
            assert_true(by / nb < ay / na - 10);
        }
        /* the trachea is above the heart */
        assert_true(ras.landmark_ras[SYNTH_LM_TRACHEA][2] >
                    ras.landmark_ras[SYNTH_LM_HEART][2] + 80);
        img_vol_free(&a);
        img_vol_free(&b);
        synth_study_free(&ras);
        synth_study_free(&lps);
    }
}

/* The qform written next to the sform describes the same affine. */
static void test_qform(void **state)
{
    const char *dir = *state;
    nifti_set_debug_level(0);
    for (uint64_t seed = 1; seed <= 8; seed++) {
        synth_study s;
        make(NULL, seed, seed * 31, SYNTH_VOLUME, SYNTH_STORE_RANDOM, 0, &s);
        char *p = tu_path(dir, "q.nii.gz"), err[256];
        assert_int_equal(synth_write_nifti(&s, p, err, sizeof err), SYNTH_OK);
        nifti_image *im = nifti_image_read(p, 0);
        assert_non_null(im);
        assert_int_equal(im->qform_code, 1);
        assert_int_equal(im->sform_code, 1);
        assert_int_equal(im->datatype, DT_INT16);
        assert_true(im->scl_slope == 1.0f);
        assert_true(im->scl_inter == 0.0f || im->scl_inter == -1024.0f);
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 4; j++) {
                /* float quaternions lose ~1e-3 near a 180-degree turn (LPS) */
                assert_true(fabs(im->qto_xyz.m[i][j] - im->sto_xyz.m[i][j]) < 1e-2);
                assert_true(fabs(im->sto_xyz.m[i][j] - s.affine[i][j]) < 1e-3);
            }
        nifti_image_free(im);
        free(p);
        synth_study_free(&s);
    }
}

static void test_hu_ranges(void **state)
{
    const char *dir = *state;
    for (uint64_t seed = 1; seed <= 6; seed++) {
        synth_findings F = one(SYNTH_NORMAL, SYNTH_LOC_CHEST, 0, 1, 0);
        synth_study s;
        make(&F, seed * 7, seed, SYNTH_VOLUME, SYNTH_STORE_RANDOM, 2, &s);
        img_vol v;
        roundtrip(dir, "hu.nii.gz", &s, &v);
        const double(*lm)[3] = (const double(*)[3])s.landmark_ras;
        struct {
            int lm;
            float lo, hi;
        } want[] = {
            {SYNTH_LM_LUNG_R, -900, -700}, {SYNTH_LM_LUNG_L, -900, -700},
            {SYNTH_LM_HEART, 30, 60},      {SYNTH_LM_AORTA, 30, 60},
            {SYNTH_LM_SPINE, 390, 1000},   {SYNTH_LM_FAT, -125, -75},
            {SYNTH_LM_LIVER, 45, 75},      {SYNTH_LM_TRACHEA, -1024, -950},
            {SYNTH_LM_OUTSIDE, -1024, -990},
        };
        for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
            float h = median_at(&v, lm[want[i].lm]);
            if (h < want[i].lo || h > want[i].hi)
                fail_msg("seed %d: %s at %.0f HU, expected %.0f..%.0f", (int)seed,
                         synth_landmark_name(want[i].lm), h, want[i].lo, want[i].hi);
        }
        float mn = 1e9f, mx = -1e9f;
        size_t nb = 0, nv = (size_t)v.nx * v.ny * v.nz;
        for (size_t i = 0; i < nv; i++) {
            mn = fminf(mn, v.data[i]);
            mx = fmaxf(mx, v.data[i]);
            nb += v.data[i] > 600;
        }
        assert_true(mn >= -1024 && mn <= -990);
        assert_true(mx >= 650 && mx <= 1000); /* cortical bone */
        assert_true(nb > 200);
        img_vol_free(&v);
        synth_study_free(&s);
    }
}

/* Where the labels say, the volume shows it. */
static void test_findings_present(void **state)
{
    const char *dir = *state;
    const double noise = 3;
    /* nodules and masses: a dense blob at the labelled point, in its lobe */
    static const synth_location lobes[] = {SYNTH_LOC_RUL, SYNTH_LOC_RML,
                                               SYNTH_LOC_RLL, SYNTH_LOC_LUL,
                                               SYNTH_LOC_LLL};
    for (int li = 0; li < 5; li++)
        for (int kind = 0; kind < 2; kind++) {
            synth_findings F = kind ? one(SYNTH_MASS, lobes[li], 40, 1, 0)
                                        : one(SYNTH_NODULE, lobes[li], 14, 1, 0);
            synth_study s;
            make(&F, 50 + li, 60 + li + kind, SYNTH_VOLUME, 0, noise, &s);
            img_vol v;
            roundtrip(dir, "f.nii.gz", &s, &v);
            const double *p = s.finding_ras[0];
            const double *sp = s.landmark_ras[SYNTH_LM_SPINE];
            const double *ht = s.landmark_ras[SYNTH_LM_HEART];
            float h = hu_at(&v, p); /* small: the nearest voxel is inside */
            if (h < -100)
                fail_msg("%s in %s: %.0f HU at its centre", synth_finding_name(F.label[0].finding),
                         synth_location_name(lobes[li]), h);
            /* a blob in lung: air-filled lung next to it */
            int airy = 0;
            for (int ax = 0; ax < 3; ax++)
                for (int sg = -1; sg <= 1; sg += 2) {
                    double q[3] = {p[0], p[1], p[2]};
                    q[ax] += sg * (F.label[0].size_mm / 2.0 + 12);
                    airy += hu_at(&v, q) < -500;
                }
            assert_true(airy >= 1);
            /* side and level of the lobe */
            int right = lobes[li] <= SYNTH_LOC_RLL;
            assert_true(right ? p[0] > sp[0] + 20 : p[0] < sp[0] - 20);
            if (lobes[li] == SYNTH_LOC_RUL || lobes[li] == SYNTH_LOC_LUL)
                assert_true(p[2] > ht[2]); /* above the heart's centre (both vary +-1 cm) */
            if (lobes[li] == SYNTH_LOC_RLL || lobes[li] == SYNTH_LOC_LLL)
                assert_true(p[2] < ht[2] + 100 && (p[1] < ht[1] || p[2] < ht[2] - 10));
            if (lobes[li] == SYNTH_LOC_RML)
                assert_true(p[2] < ht[2] + 70 && p[1] > sp[1] + 5);
            img_vol_free(&v);
            synth_study_free(&s);
        }

    /* a right pleural effusion: fluid (about 10 HU) on the right, posterior
     * (dependent, supine) and low; next to nothing on the left */
    for (int g = 2; g <= 3; g++) {
        synth_findings F = one(SYNTH_EFFUSION, SYNTH_LOC_RIGHT, 0, 1, g);
        synth_study s;
        make(&F, 70 + g, 71, SYNTH_VOLUME, SYNTH_STORE_LPS, 2, &s);
        img_vol v;
        roundtrip(dir, "eff.nii.gz", &s, &v);
        const double *p = s.finding_ras[0];
        const double *sp = s.landmark_ras[SYNTH_LM_SPINE];
        const double *ht = s.landmark_ras[SYNTH_LM_HEART];
        const double *lr = s.landmark_ras[SYNTH_LM_LUNG_R];
        float h = median_at(&v, p);
        assert_true(h > -15 && h < 30);
        assert_true(p[0] > sp[0] + 30); /* right */
        assert_true(p[1] < ht[1] - 20); /* posterior */
        assert_true(p[2] < lr[2]);      /* below the upper lung */
        size_t fluid[2];
        /* behind the heart and above the diaphragm, away from the abdomen */
        count_side_in(&v, &s, -8, 22, ht[2] - 20, sp[1] + 30, fluid);
        assert_true(fluid[0] > 150);
        assert_true(fluid[0] > 10 * (fluid[1] + 1));
        img_vol_free(&v);
        synth_study_free(&s);
    }

    /* a left pneumothorax: air, no lung, at the apex or laterally */
    {
        synth_findings F = one(SYNTH_PNEUMOTHORAX, SYNTH_LOC_LEFT, 0, 1, 3);
        synth_study s;
        make(&F, 81, 82, SYNTH_VOLUME, 0, noise, &s);
        img_vol v;
        roundtrip(dir, "ptx.nii.gz", &s, &v);
        const double *p = s.finding_ras[0];
        const double *sp = s.landmark_ras[SYNTH_LM_SPINE];
        const double *ht = s.landmark_ras[SYNTH_LM_HEART];
        assert_true(median_at(&v, p) < -960);
        assert_true(p[0] < sp[0] - 30);
        assert_true(p[2] > ht[2] + 40 || p[0] < sp[0] - 100);
        size_t air[2];
        count_side(&v, &s, -1024, -960, air);
        assert_true(air[1] > 300 && air[1] > 5 * (air[0] + 1));
        img_vol_free(&v);
        synth_study_free(&s);
    }

    /* consolidation: soft tissue density in the lobe */
    {
        synth_findings F = one(SYNTH_CONSOLIDATION, SYNTH_LOC_RLL, 0, 1, 0);
        synth_study s;
        make(&F, 91, 92, SYNTH_VOLUME, 0, noise, &s);
        img_vol v;
        roundtrip(dir, "cons.nii.gz", &s, &v);
        const double *p = s.finding_ras[0];
        float h = median_at(&v, p);
        assert_true(h > 0 && h < 60);
        assert_true(p[0] > s.landmark_ras[SYNTH_LM_SPINE][0] + 20);
        img_vol_free(&v);
        synth_study_free(&s);
    }

    /* cardiomegaly and emphysema, each against the same patient without it */
    {
        synth_findings N = one(SYNTH_NORMAL, SYNTH_LOC_CHEST, 0, 1, 0);
        synth_findings C = one(SYNTH_CARDIOMEGALY, SYNTH_LOC_HEART, 0, 1, 3);
        synth_findings E = one(SYNTH_EMPHYSEMA, SYNTH_LOC_LUNGS, 0, 1, 3);
        synth_study sn, sc, se;
        make(&N, 95, 96, SYNTH_VOLUME, 0, noise, &sn);
        make(&C, 95, 96, SYNTH_VOLUME, 0, noise, &sc);
        make(&E, 95, 96, SYNTH_VOLUME, 0, noise, &se);
        img_vol vn, vc, ve;
        roundtrip(dir, "n.nii.gz", &sn, &vn);
        roundtrip(dir, "c.nii.gz", &sc, &vc);
        roundtrip(dir, "e.nii.gz", &se, &ve);
        size_t ln[2], lc[2];
        count_side(&vn, &sn, -1000, -500, ln);
        count_side(&vc, &sc, -1000, -500, lc);
        assert_true(lc[1] < 0.85 * ln[1]); /* the big heart displaces the left lung */
        float hc = median_at(&vc, sc.finding_ras[0]);
        assert_true(hc > 30 && hc < 60);
        /* emphysema: darker lungs, a bulla at its point */
        double mn = 0, me = 0;
        size_t cn = 0, ce = 0;
        size_t nv = (size_t)vn.nx * vn.ny * vn.nz;
        for (size_t i = 0; i < nv; i++)
            if (vn.data[i] > -990 && vn.data[i] < -600) {
                mn += vn.data[i];
                cn++;
            }
        nv = (size_t)ve.nx * ve.ny * ve.nz;
        for (size_t i = 0; i < nv; i++)
            if (ve.data[i] > -990 && ve.data[i] < -600) {
                me += ve.data[i];
                ce++;
            }
        assert_true(me / ce < mn / cn - 60);
        assert_true(hu_at(&ve, se.finding_ras[0]) < -975);
        img_vol_free(&vn);
        img_vol_free(&vc);
        img_vol_free(&ve);
        synth_study_free(&sn);
        synth_study_free(&sc);
        synth_study_free(&se);
    }
}

/* ---- radiographs --------------------------------------------------------------------- */

static double box_mean(const img_vol *im, double cx, double cy, int r)
{
    double s = 0;
    int n = 0;
    for (int y = (int)cy - r; y <= (int)cy + r; y++)
        for (int x = (int)cx - r; x <= (int)cx + r; x++)
            if (x >= 0 && y >= 0 && x < im->nx && y < im->ny) {
                s += im->data[(size_t)y * im->nx + x];
                n++;
            }
    assert_true(n > 0);
    return s / n;
}

/* Pleural effusions of every grade, on either side, change the CT: the
 * fluid replaces lung, so each study has voxels that differ by more than
 * 300 HU from the same patient without the effusion, and their volume
 * grows with the grade.  (Small effusions once were a band measured from
 * the chest wall, which the narrow lung base barely reached: many changed
 * nothing.)  No noise, so the two studies differ only by the finding. */
static void test_effusion_volumes(void **state)
{
    (void)state;
    enum { NPAT = 12 };
    static const synth_opts small = {.size = SYNTH_SIZE_SMALL};
    double lo[3] = {1e9, 1e9, 1e9}, hi[3] = {0};
    for (int side = 0; side < 2; side++)
        for (int g = 1; g <= 3; g++)
            for (int k = 0; k < NPAT; k++) {
                synth_location loc = side ? SYNTH_LOC_LEFT : SYNTH_LOC_RIGHT;
                synth_findings N = one(SYNTH_NORMAL, SYNTH_LOC_CHEST, 0, 1, 0);
                synth_findings E = one(SYNTH_EFFUSION, loc, 0, 1, g);
                synth_req rn = {500 + k, 600 + k, SYNTH_VOLUME, &N, SYNTH_STORE_RAS, -1};
                synth_req re = {500 + k, 600 + k, SYNTH_VOLUME, &E, SYNTH_STORE_RAS, -1};
                synth_study sn, se;
                char err[256];
                assert_int_equal(synth_study_make(&small, &rn, &sn, err, sizeof err), SYNTH_OK);
                assert_int_equal(synth_study_make(&small, &re, &se, err, sizeof err), SYNTH_OK);
                assert_int_equal(sn.nx, se.nx);
                assert_int_equal(sn.ny, se.ny);
                assert_int_equal(sn.nz, se.nz);
                size_t n = (size_t)sn.nx * sn.ny * sn.nz, changed = 0, wrong_side = 0;
                for (size_t v = 0; v < n; v++)
                    if (abs((int)se.vol[v] - (int)sn.vol[v]) > 300) {
                        changed++;
                        /* RAS storage: i grows toward the patient's right */
                        int i = (int)(v % (size_t)sn.nx);
                        double x = sn.affine[0][0] * i + sn.affine[0][3];
                        wrong_side += side ? x > 20 : x < -20;
                    }
                double ml = changed * sn.spacing[0] * sn.spacing[1] * sn.spacing[2] / 1000.0;
                if (ml < 5)
                    fail_msg("%s %s effusion, patient %d: %.1f ml changed by > 300 HU",
                             synth_grade_name(SYNTH_EFFUSION, g), synth_location_name(loc), k, ml);
                assert_true(wrong_side * 20 < changed + 20);
                lo[g - 1] = ml < lo[g - 1] ? ml : lo[g - 1];
                hi[g - 1] = ml > hi[g - 1] ? ml : hi[g - 1];
                synth_study_free(&sn);
                synth_study_free(&se);
            }
    print_message("effusion volumes (ml changed by > 300 HU): small %.0f-%.0f, moderate %.0f-%.0f, "
                  "large %.0f-%.0f\n", lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]);
    /* the grades are ordered: every moderate above the typical small, ... */
    assert_true(lo[1] > lo[0] && hi[1] > hi[0]);
    assert_true(lo[2] > lo[1] && hi[2] > hi[1]);
}

static void test_radiograph(void **state)
{
    const char *dir = *state;
    for (uint64_t seed = 1; seed <= 4; seed++) {
        synth_findings F = one(SYNTH_NORMAL, SYNTH_LOC_CHEST, 0, 1, 0);
        synth_study s;
        make(&F, seed, seed + 5, SYNTH_IMAGE, 0, 0, &s);
        assert_null(s.vol);
        assert_non_null(s.img);
        assert_int_equal(s.findings.modality, SYNTH_CR);
        char *p = tu_path(dir, "cr.png"), err[256] = "";
        assert_int_equal(synth_write_png(&s, p, err, sizeof err), SYNTH_OK);
        /* a 16-bit greyscale PNG: IHDR bit depth and colour type */
        size_t n;
        unsigned char *raw = slurp(p, &n);
        assert_non_null(raw);
        assert_true(n > 33 && !memcmp(raw + 12, "IHDR", 4));
        assert_int_equal(raw[24], 16);
        assert_int_equal(raw[25], 0);
        free(raw);
        img_vol im;
        assert_int_equal(img_read_png(p, NULL, &im, err, sizeof err), SYNTH_OK);
        assert_int_equal(im.nx, s.width);
        assert_int_equal(im.ny, s.height);
        assert_int_equal(im.nz, 1);
        for (size_t i = 0; i < (size_t)im.nx * im.ny; i++)
            assert_true(fabsf(im.data[i] - s.img[i] / 65535.0f) < 1e-6f);
        const double *heart = s.landmark_px[SYNTH_LM_HEART];
        const double *spine = s.landmark_px[SYNTH_LM_SPINE];
        const double *trach = s.landmark_px[SYNTH_LM_TRACHEA];
        const double *lr = s.landmark_px[SYNTH_LM_LUNG_R];
        /* shown as read: the patient's left (heart) on the image's right,
         * superior (trachea) at the top */
        assert_true(heart[0] > spine[0] + 5);
        assert_true(lr[0] < spine[0] - 20);
        assert_true(trach[1] < heart[1] - 40);
        /* at the heart's level, 40 to 85 mm from the midline, the heart
         * shadow on the patient's left is brighter than the right lung */
        double hb = 0, mb = 0, d0 = 40 / s.pixel_mm, d1 = 85 / s.pixel_mm;
        for (double d = d0; d <= d1; d += 1) {
            hb += box_mean(&im, spine[0] + d, heart[1], 2);
            mb += box_mean(&im, spine[0] - d, heart[1], 2);
        }
        if (hb < mb + 0.05 * (d1 - d0))
            fail_msg("seed %d: heart side %.3f, lung side %.3f", (int)seed, hb, mb);
        /* lungs dark, the spine bright, outside the body black */
        double lung = box_mean(&im, lr[0], lr[1], 3);
        assert_true(box_mean(&im, spine[0], lr[1], 2) > lung + 0.15);
        assert_true(box_mean(&im, 3, im.ny / 2.0, 2) < lung);
        assert_true(box_mean(&im, 3, im.ny / 2.0, 2) < 0.1);
        img_vol_free(&im);
        free(p);
        synth_study_free(&s);
    }
    /* a large nodule shows as a brighter spot */
    synth_findings F = one(SYNTH_NODULE, SYNTH_LOC_RUL, 28, 1, 0);
    double contrast = 0;
    for (uint64_t seed = 1; seed <= 6; seed++) {
        synth_study s;
        make(&F, 200 + seed, seed, SYNTH_IMAGE, 0, 0, &s);
        double cx = s.finding_px[0][0], cy = s.finding_px[0][1], in = 0, out = 0;
        int ni = 0, no = 0;
        for (int y = -12; y <= 12; y++)
            for (int x = -12; x <= 12; x++) {
                int X = (int)lround(cx) + x, Y = (int)lround(cy) + y;
                double d = sqrt(x * x + y * y), val = s.img[(size_t)Y * s.width + X] / 65535.0;
                if (d <= 2) {
                    in += val;
                    ni++;
                } else if (d >= 9 && d <= 12) {
                    out += val;
                    no++;
                }
            }
        contrast += in / ni - out / no;
        synth_study_free(&s);
    }
    assert_true(contrast / 6 > 0.03);
}

/* The same patient seed with a new acquisition: other bytes, same labels. */
static void test_rescan(void **state)
{
    (void)state;
    for (uint64_t seed = 1; seed <= 5; seed++) {
        synth_study a, b, c;
        make(NULL, seed, 1000 + seed, SYNTH_VOLUME | SYNTH_IMAGE, 0, 0, &a);
        make(NULL, seed, 2000 + seed, SYNTH_VOLUME | SYNTH_IMAGE, 0, 0, &b);
        make(NULL, seed, 1000 + seed, SYNTH_VOLUME | SYNTH_IMAGE, 0, 0, &c);
        assert_int_equal(a.findings.n, b.findings.n);
        assert_memory_equal(a.findings.label, b.findings.label,
                            sizeof a.findings.label[0] * a.findings.n);
        check_report(a.report, &a.findings);
        check_report(b.report, &b.findings);
        size_t na = (size_t)a.nx * a.ny * a.nz;
        assert_true(na != (size_t)b.nx * b.ny * b.nz || memcmp(a.vol, b.vol, na * 2) != 0);
        assert_true(memcmp(a.img, b.img, (size_t)a.width * a.height * 2) != 0);
        /* the same seeds: the same study */
        assert_int_equal(na, (size_t)c.nx * c.ny * c.nz);
        assert_memory_equal(a.vol, c.vol, na * 2);
        assert_memory_equal(a.img, c.img, (size_t)a.width * a.height * 2);
        assert_string_equal(a.report, c.report);
        assert_memory_equal(a.affine, c.affine, sizeof a.affine);
        synth_study_free(&a);
        synth_study_free(&b);
        synth_study_free(&c);
    }
    synth_study_free(NULL);
}

/* ---- datasets --------------------------------------------------------------------------- */

static void write_set(const char *dir, uint64_t seed, int threads, synth_split split)
{
    synth_opts o = {0};
    o.seed = seed;
    o.volumes = 6;
    o.images = 7;
    o.rescans = 4;
    o.split = split;
    o.size = SYNTH_SIZE_SMALL;
    o.threads = threads;
    synth_stats st;
    char err[512] = "";
    int rc = synth_dataset_write(dir, &o, &st, err, sizeof err);
    if (rc)
        fail_msg("synth_dataset_write: %s", err);
    assert_int_equal(st.volumes, 6);
    assert_int_equal(st.images, 7);
    assert_int_equal(st.rescans, 4);
    assert_int_equal(st.pairs, 4);
    assert_true(st.bytes > 0);
}

static void test_determinism(void **state)
{
    const char *dir = *state;
    char *a = tu_path(dir, "a"), *b = tu_path(dir, "b"), *c = tu_path(dir, "c");
    write_set(a, 5, 1, SYNTH_TRAIN);
    write_set(b, 5, 3, SYNTH_TRAIN);
    write_set(c, 6, 2, SYNTH_TRAIN);
    static const char *const files[] = {
        "labels.json",          "train.jsonl",          "train/vol_000000.nii.gz",
        "train/vol_000005.nii.gz", "train/img_000000.png", "train/img_000006.png"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char *pa = tu_path(a, files[i]), *pb = tu_path(b, files[i]), *pc = tu_path(c, files[i]);
        assert_true(same_file(pa, pb));
        if (i > 0)
            assert_false(same_file(pa, pc));
        free(pa);
        free(pb);
        free(pc);
    }
    /* every file of the two runs */
    char *ma = tu_path(a, "train.jsonl");
    size_t n;
    char *man = (char *)slurp(ma, &n);
    assert_non_null(man);
    for (char *line = strtok(man, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        assert_non_null(j);
        const char *f = cJSON_GetStringValue(cJSON_GetObjectItem(j, "file"));
        char *pa = tu_path(a, f), *pb = tu_path(b, f);
        assert_true(same_file(pa, pb));
        free(pa);
        free(pb);
        cJSON_Delete(j);
    }
    free(man);
    free(ma);
    /* a temporary manifest never stays behind */
    char *tmp = tu_path(a, "train.jsonl.tmp");
    assert_int_equal(access(tmp, F_OK), -1);
    free(tmp);
    free(a);
    free(b);
    free(c);
}

static const char *jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(o, k);
    assert_true(cJSON_IsString(v));
    return v->valuestring;
}

/* Labels of a manifest item back into a findings struct. */
static void parse_labels(const cJSON *arr, synth_findings *F)
{
    memset(F, 0, sizeof *F);
    assert_true(cJSON_IsArray(arr));
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        assert_true(F->n < SYNTH_MAX_LABELS);
        synth_label *b = &F->label[F->n++];
        const char *f = jstr(it, "finding"), *l = jstr(it, "location");
        int fi = -1, lo = -1;
        for (int i = 0; i < SYNTH_NFINDINGS; i++)
            if (!strcmp(f, synth_finding_name(i)))
                fi = i;
        for (int i = 0; i < SYNTH_NLOCATIONS; i++)
            if (!strcmp(l, synth_location_name(i)))
                lo = i;
        assert_true(fi >= 0 && lo >= 0);
        assert_true(synth_pair_valid(fi, lo));
        b->finding = (synth_finding)fi;
        b->location = (synth_location)lo;
        b->count = 1;
        const cJSON *v;
        if ((v = cJSON_GetObjectItem(it, "size_mm")))
            b->size_mm = v->valueint;
        if ((v = cJSON_GetObjectItem(it, "count")))
            b->count = v->valueint;
        for (int g = 1; g <= 3; g++) {
            const char *key = fi == SYNTH_EFFUSION || fi == SYNTH_PNEUMOTHORAX ? "size"
                                                                                       : "severity";
            if ((v = cJSON_GetObjectItem(it, key)) && cJSON_IsString(v) &&
                synth_grade_name(fi, g) && !strcmp(v->valuestring, synth_grade_name(fi, g)))
                b->grade = g;
        }
    }
    assert_int_equal(synth_findings_check(F, NULL, 0), SYNTH_OK);
}

static void test_manifest(void **state)
{
    const char *dir = *state;
    char *d = tu_path(dir, "m");
    write_set(d, 11, 2, SYNTH_VAL);
    write_set(d, 11, 2, SYNTH_TEST); /* a second split in the same folder */
    char *lp = tu_path(d, "labels.json");
    size_t n;
    char *txt = (char *)slurp(lp, &n);
    cJSON *vocab = cJSON_Parse(txt);
    assert_non_null(vocab);
    cJSON_Delete(vocab);
    free(txt);
    free(lp);

    char *mp = tu_path(d, "val.jsonl");
    char *man = (char *)slurp(mp, &n);
    assert_non_null(man);
    cJSON *items[64];
    int ni = 0;
    for (char *line = strtok(man, "\n"); line; line = strtok(NULL, "\n")) {
        assert_true(ni < 64);
        items[ni] = cJSON_Parse(line);
        assert_non_null(items[ni]);
        ni++;
    }
    assert_int_equal(ni, 6 + 7 + 4);
    int pairs = 0, rescans = 0;
    for (int i = 0; i < ni; i++) {
        const cJSON *o = items[i];
        const char *file = jstr(o, "file"), *kind = jstr(o, "kind"), *mod = jstr(o, "modality");
        assert_string_equal(jstr(o, "split"), "val");
        const int vol = !strcmp(kind, "volume");
        assert_true(vol || !strcmp(kind, "image"));
        assert_string_equal(mod, vol ? "CT" : "CR");
        assert_true(!strncmp(file, vol ? "val/vol_" : "val/img_", 8));
        char *fp = tu_path(d, file);
        struct stat sb;
        assert_int_equal(stat(fp, &sb), 0);
        assert_true(sb.st_size > 1000);
        free(fp);
        const char *pat = jstr(o, "patient"), *study = jstr(o, "study");
        assert_true(strlen(pat) == 7 && pat[0] == 'P' && atoi(pat + 1) >= 700000 &&
                    atoi(pat + 1) < 850000);
        assert_true(strlen(study) == 8 && study[0] == 'S');
        synth_findings F;
        parse_labels(cJSON_GetObjectItem(o, "labels"), &F);
        F.modality = vol ? SYNTH_CT : SYNTH_CR;
        check_report(jstr(o, "report"), &F);
        /* pairs and rescans point at items of this manifest with the same
         * patient and labels */
        const char *keys[2] = {"pair", "rescan_of"};
        for (int k = 0; k < 2; k++) {
            const cJSON *ref = cJSON_GetObjectItem(o, keys[k]);
            if (!ref)
                continue;
            assert_true(cJSON_IsString(ref));
            int found = -1;
            for (int j = 0; j < ni; j++)
                if (!strcmp(jstr(items[j], "study"), ref->valuestring))
                    found = j;
            assert_true(found >= 0 && found != i);
            const cJSON *t = items[found];
            assert_string_equal(jstr(t, "patient"), pat);
            char *l1 = cJSON_PrintUnformatted(cJSON_GetObjectItem(o, "labels"));
            char *l2 = cJSON_PrintUnformatted(cJSON_GetObjectItem(t, "labels"));
            assert_string_equal(l1, l2);
            free(l1);
            free(l2);
            if (k == 0) { /* a radiograph projected from a CT's phantom */
                assert_false(vol);
                assert_string_equal(jstr(t, "kind"), "volume");
                pairs++;
            } else { /* a rescan: same kind, other bytes */
                assert_true(found < i);
                assert_string_equal(jstr(t, "kind"), kind);
                assert_null(cJSON_GetObjectItem(t, "rescan_of"));
                char *p1 = tu_path(d, file), *p2 = tu_path(d, jstr(t, "file"));
                assert_false(same_file(p1, p2));
                free(p1);
                free(p2);
                rescans++;
            }
        }
    }
    assert_int_equal(pairs, 4);
    assert_int_equal(rescans, 4);
    for (int i = 0; i < ni; i++)
        cJSON_Delete(items[i]);
    free(man);
    free(mp);
    /* splits never share a patient */
    char *tp = tu_path(d, "test.jsonl");
    man = (char *)slurp(tp, &n);
    assert_non_null(man);
    assert_null(strstr(man, "\"patient\":\"P7"));
    assert_non_null(strstr(man, "\"patient\":\"P85"));
    free(man);
    free(tp);
    free(d);
}

static void test_errors(void **state)
{
    const char *dir = *state;
    char err[512];
    synth_opts o = {0};
    o.volumes = 1;
    synth_stats st;
    o.split = (synth_split)7;
    assert_int_equal(synth_dataset_write(dir, &o, &st, err, sizeof err), SYNTH_INVAL);
    assert_non_null(strstr(err, "split"));
    o.split = SYNTH_VAL;
    o.volumes = 150001;
    assert_int_equal(synth_dataset_write(dir, &o, &st, err, sizeof err), SYNTH_INVAL);
    assert_non_null(strstr(err, "val"));
    o.volumes = 0;
    o.rescans = 3;
    assert_int_equal(synth_dataset_write(dir, &o, &st, err, sizeof err), SYNTH_INVAL);
    assert_non_null(strstr(err, "rescans"));
    o.rescans = 0;
    o.size = (synth_size)9;
    assert_int_equal(synth_dataset_write(dir, &o, &st, err, sizeof err), SYNTH_INVAL);
    o.size = SYNTH_SIZE_SMALL;
    assert_int_equal(synth_dataset_write(NULL, &o, &st, err, sizeof err), SYNTH_INVAL);
    /* an output path under a regular file */
    char *f = tu_path(dir, "plain");
    FILE *fp = fopen(f, "w");
    assert_non_null(fp);
    fclose(fp);
    o.volumes = 1;
    assert_int_equal(synth_dataset_write(f, &o, &st, err, sizeof err), SYNTH_IO);
    assert_non_null(strstr(err, f));
    char *sub = tu_path(f, "x");
    assert_int_equal(synth_dataset_write(sub, &o, &st, err, sizeof err), SYNTH_IO);
    assert_non_null(strstr(err, sub));
    free(sub);
    /* writers: nothing to write, an unwritable path */
    synth_study s;
    make(NULL, 1, 1, SYNTH_IMAGE, 0, 0, &s);
    char *bad = tu_path(f, "v.nii.gz");
    assert_int_equal(synth_write_nifti(&s, bad, err, sizeof err), SYNTH_INVAL);
    assert_non_null(strstr(err, "no volume"));
    synth_study_free(&s);
    make(NULL, 1, 1, SYNTH_VOLUME, 0, 0, &s);
    assert_int_equal(synth_write_png(&s, bad, err, sizeof err), SYNTH_INVAL);
    assert_int_equal(synth_write_nifti(&s, bad, err, sizeof err), SYNTH_IO);
    assert_non_null(strstr(err, bad));
    assert_int_equal(synth_write_nifti(&s, "/nonexistent-dir/v.nii", err, sizeof err), SYNTH_IO);
    synth_study_free(&s);
    make(NULL, 1, 1, SYNTH_IMAGE, 0, 0, &s);
    assert_int_equal(synth_write_png(&s, bad, err, sizeof err), SYNTH_IO);
    assert_non_null(strstr(err, bad));
    synth_study_free(&s);
    free(bad);
    free(f);
    /* parsers */
    synth_split sp;
    synth_size sz;
    assert_int_equal(synth_split_parse("test", &sp), SYNTH_OK);
    assert_int_equal(sp, SYNTH_TEST);
    assert_int_equal(synth_split_parse("dev", &sp), SYNTH_INVAL);
    assert_int_equal(synth_size_parse("small", &sz), SYNTH_OK);
    assert_int_equal(sz, SYNTH_SIZE_SMALL);
    assert_int_equal(synth_size_parse("huge", &sz), SYNTH_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng),
        cmocka_unit_test(test_vocab),
        cmocka_unit_test(test_findings_check),
        cmocka_unit_test(test_report),
        cmocka_unit_test_setup_teardown(test_orientation, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_qform, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_hu_ranges, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_findings_present, setup_dir, teardown_dir),
        cmocka_unit_test(test_effusion_volumes),
        cmocka_unit_test_setup_teardown(test_radiograph, setup_dir, teardown_dir),
        cmocka_unit_test(test_rescan),
        cmocka_unit_test_setup_teardown(test_determinism, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_manifest, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_errors, setup_dir, teardown_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
