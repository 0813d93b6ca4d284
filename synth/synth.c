/* synth.c - the built-in chest benchmark (see synth.h and docs/synth.md).
 *
 * A phantom is an ordered list of paint operations in the patient frame
 * (millimetres, RAS+, origin in the middle of the thorax): ellipsoids and
 * elliptic cylinders cut by a z slab ("quads"), capsules (a segment with a
 * radius: vessels, ribs, airways), and region predicates (a lung above its
 * diaphragm dome, pleural fluid, pneumothorax, consolidation of a lobe).
 * Each operation writes a tissue label into the grid voxels whose centres
 * it covers, but only over the labels in its mask, so the order and the
 * masks say what displaces what (a nodule displaces lung, never a rib).
 * The same list paints the CT grid (rotated and shifted by the
 * acquisition) and the radiograph's depth grid, so that a CT and a
 * radiograph of one phantom show the same anatomy and findings.  Labels
 * then become HU (CT) or attenuation summed along the anterior-posterior
 * axis (radiograph).
 *
 * Cost: a quad is solved per scanline (a line of voxels enters and leaves
 * it at the roots of a quadratic), so a big ellipsoid costs its scanlines
 * plus the voxels it writes; capsules and predicates test only the voxels
 * of their own bounding box.  Nothing loops over all objects per voxel.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "synth/synth.h"
#include "util/util.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <nifti1.h> /* struct nifti_1_header: the on-disk layout only */
#include <png.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

#define SYNTH__MSG(name, msg) msg,
#define SYNTH__NAME(name, msg) "SYNTH_" #name,
static const char *const synth_msgs[] = {SYNTH_ERRNO_MAP(SYNTH__MSG)};
static const char *const synth_names[] = {SYNTH_ERRNO_MAP(SYNTH__NAME)};

const char *synth_strerror(int c) { return util_errtab(synth_msgs, SYNTH_NERR, c, "unknown error"); }
const char *synth_errname(int c) { return util_errtab(synth_names, SYNTH_NERR, c, "SYNTH_UNKNOWN"); }

/* ---- random numbers ------------------------------------------------------- */

/* A seed for stream b of a: every (seed, stream, index) chain gets its own
 * well-mixed 64-bit value. */
static uint64_t mix(uint64_t a, uint64_t b)
{
    uint64_t x = a ^ (b * 0xd1342543de82ef95ULL + 0x632be59bd9b4e019ULL);
    util_splitmix64(&x);
    return util_splitmix64(&x);
}

void synth_rng_seed(synth_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = util_splitmix64(&x);
}

uint64_t synth_rng_u64(synth_rng *r) { return util_xoshiro_next(r->s); }

double synth_rng_uniform(synth_rng *r)
{
    return (double)(synth_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

/* Lemire's multiply-and-reject: no modulo bias. */
uint32_t synth_rng_below(synth_rng *r, uint32_t n)
{
    assert(n > 0);
    uint64_t m = (synth_rng_u64(r) >> 32) * (uint64_t)n;
    uint32_t low = (uint32_t)m;
    if (low < n) {
        uint32_t thresh = (uint32_t)(-n) % n;
        while (low < thresh) {
            m = (synth_rng_u64(r) >> 32) * (uint64_t)n;
            low = (uint32_t)m;
        }
    }
    return (uint32_t)(m >> 32);
}

double synth_rng_normal(synth_rng *r)
{
    double u1 = 1.0 - synth_rng_uniform(r), u2 = synth_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

static double U(synth_rng *r, double lo, double hi)
{
    return lo + (hi - lo) * synth_rng_uniform(r);
}

static int chance(synth_rng *r, double p) { return synth_rng_uniform(r) < p; }

static int pickw(synth_rng *r, const double *w, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += w[i];
    double x = synth_rng_uniform(r) * s;
    for (int i = 0; i < n; i++) {
        x -= w[i];
        if (x < 0)
            return i;
    }
    return n - 1;
}

#define PICK(r, arr) ((arr)[synth_rng_below((r), (uint32_t)(sizeof(arr) / sizeof *(arr)))])

/* Voxel noise: the sum of four 16-bit uniforms from one draw (Irwin-Hall),
 * centred and scaled to unit variance.  Close enough to a normal for CT
 * noise, bounded by +-3.46, and all integer arithmetic until the end. */
static inline double noise_unit(synth_rng *r)
{
    uint64_t x = synth_rng_u64(r);
    int64_t s = (int64_t)(x & 0xffff) + (int64_t)((x >> 16) & 0xffff) +
                (int64_t)((x >> 32) & 0xffff) + (int64_t)(x >> 48);
    return (double)(s - 131070) * (1.0 / 37837.2);
}

/* ---- vocabulary ------------------------------------------------------------ */

static const char *const FINDING_NAME[] = {
#define X(name, str) str,
    SYNTH_FINDING_MAP(X)
#undef X
};
static const char *const LOCATION_NAME[] = {
#define X(name, str) str,
    SYNTH_LOCATION_MAP(X)
#undef X
};
static const char *const LANDMARK_NAME[] = {
#define X(name, str) str,
    SYNTH_LANDMARK_MAP(X)
#undef X
};

const char *synth_finding_name(int f)
{
    return f >= 0 && f < SYNTH_NFINDINGS ? FINDING_NAME[f] : NULL;
}

const char *synth_location_name(int l)
{
    return l >= 0 && l < SYNTH_NLOCATIONS ? LOCATION_NAME[l] : NULL;
}

const char *synth_landmark_name(int m)
{
    return m >= 0 && m < SYNTH_NLANDMARKS ? LANDMARK_NAME[m] : NULL;
}

static int is_lobe(int l) { return l >= SYNTH_LOC_RUL && l <= SYNTH_LOC_LLL; }
static int lobe_side(int l) { return l <= SYNTH_LOC_RLL ? 0 : 1; } /* 0 right, 1 left */
static int side_of(const synth_label *b)
{
    return is_lobe(b->location) ? lobe_side(b->location) : b->location == SYNTH_LOC_LEFT;
}

int synth_pair_valid(int f, int l)
{
    switch (f) {
    case SYNTH_NORMAL: return l == SYNTH_LOC_CHEST;
    case SYNTH_NODULE:
    case SYNTH_MASS:
    case SYNTH_CONSOLIDATION: return is_lobe(l);
    case SYNTH_EFFUSION:
    case SYNTH_PNEUMOTHORAX: return l == SYNTH_LOC_RIGHT || l == SYNTH_LOC_LEFT;
    case SYNTH_CARDIOMEGALY: return l == SYNTH_LOC_HEART;
    case SYNTH_EMPHYSEMA: return l == SYNTH_LOC_LUNGS;
    default: return 0;
    }
}

static int has_grade(int f)
{
    return f == SYNTH_EFFUSION || f == SYNTH_PNEUMOTHORAX || f == SYNTH_CARDIOMEGALY ||
           f == SYNTH_EMPHYSEMA;
}

const char *synth_grade_name(int f, int g)
{
    static const char *const size[] = {"small", "moderate", "large"};
    static const char *const sev[] = {"mild", "moderate", "severe"};
    if (g < 1 || g > 3 || !has_grade(f))
        return NULL;
    return f == SYNTH_EFFUSION || f == SYNTH_PNEUMOTHORAX ? size[g - 1] : sev[g - 1];
}

static const char *grade_key(int f)
{
    return f == SYNTH_EFFUSION || f == SYNTH_PNEUMOTHORAX ? "size" : "severity";
}

int synth_findings_check(const synth_findings *f, char *eb, size_t el)
{
    if (f == NULL || f->n < 1 || f->n > SYNTH_MAX_LABELS)
        return util_errf(eb, el, SYNTH_INVAL, "findings: n = %d, expected 1 to %d", f ? f->n : 0,
                    SYNTH_MAX_LABELS);
    for (int i = 0; i < f->n; i++) {
        const synth_label *b = &f->label[i];
        const char *fn = synth_finding_name(b->finding);
        if (fn == NULL)
            return util_errf(eb, el, SYNTH_INVAL, "findings: label %d: unknown finding %d", i, b->finding);
        if (!synth_pair_valid(b->finding, b->location))
            return util_errf(eb, el, SYNTH_INVAL, "findings: label %d: %s cannot be at location %d (%s)",
                        i, fn, b->location,
                        synth_location_name(b->location) ? synth_location_name(b->location)
                                                             : "unknown");
        if (b->finding == SYNTH_NORMAL && f->n != 1)
            return util_errf(eb, el, SYNTH_INVAL, "findings: label %d: normal must be the only label", i);
        if (b->finding == SYNTH_NODULE &&
            (b->size_mm < 4 || b->size_mm > 30 || b->count < 1 || b->count > 3))
            return util_errf(eb, el, SYNTH_INVAL,
                        "findings: label %d: nodule size_mm %d (4..30) or count %d (1..3)", i,
                        b->size_mm, b->count);
        if (b->finding == SYNTH_MASS && (b->size_mm < 30 || b->size_mm > 80))
            return util_errf(eb, el, SYNTH_INVAL, "findings: label %d: mass size_mm %d, expected 30..80",
                        i, b->size_mm);
        if (has_grade(b->finding) && (b->grade < 1 || b->grade > 3))
            return util_errf(eb, el, SYNTH_INVAL, "findings: label %d: %s grade %d, expected 1..3", i, fn,
                        b->grade);
        for (int j = 0; j < i; j++)
            if (f->label[j].finding == b->finding && f->label[j].location == b->location)
                return util_errf(eb, el, SYNTH_INVAL, "findings: labels %d and %d repeat (%s, %s)", j, i,
                            fn, synth_location_name(b->location));
    }
    return SYNTH_OK;
}

/* ---- a bounded string builder -------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t len, cap; /* cap includes the NUL */
    int over;
} sbuf;

static void sb_init(sbuf *b, char *p, size_t cap)
{
    b->p = p;
    b->cap = cap;
    b->len = 0;
    b->over = cap == 0;
    if (cap)
        p[0] = 0;
}

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->cap == 0)
        return;
    size_t room = b->cap - 1 - b->len;
    if (n > room) {
        n = room;
        b->over = 1;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof tmp)
        b->over = 1;
    sb_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void sb_json_string(sbuf *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        switch (*c) {
        case '"': sb_put(b, "\\\"", 2); break;
        case '\\': sb_put(b, "\\\\", 2); break;
        case '\n': sb_put(b, "\\n", 2); break;
        case '\t': sb_put(b, "\\t", 2); break;
        case '\r': sb_put(b, "\\r", 2); break;
        default:
            if (*c < 0x20)
                sb_printf(b, "\\u%04x", *c);
            else
                sb_put(b, (const char *)c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

static void labels_json_sb(sbuf *b, const synth_findings *f)
{
    sb_puts(b, "[");
    for (int i = 0; i < f->n; i++) {
        const synth_label *l = &f->label[i];
        sb_printf(b, "%s{\"finding\":\"%s\",\"location\":\"%s\"", i ? "," : "",
                  FINDING_NAME[l->finding], LOCATION_NAME[l->location]);
        if (l->finding == SYNTH_NODULE)
            sb_printf(b, ",\"size_mm\":%d,\"count\":%d", l->size_mm, l->count);
        else if (l->finding == SYNTH_MASS)
            sb_printf(b, ",\"size_mm\":%d", l->size_mm);
        else if (has_grade(l->finding))
            sb_printf(b, ",\"%s\":\"%s\"", grade_key(l->finding),
                      synth_grade_name(l->finding, l->grade));
        sb_puts(b, "}");
    }
    sb_puts(b, "]");
}

int synth_labels_json(const synth_findings *f, char *buf, size_t len)
{
    sbuf b;
    sb_init(&b, buf, len);
    if (synth_findings_check(f, NULL, 0))
        return SYNTH_INVAL;
    labels_json_sb(&b, f);
    return b.over ? SYNTH_TOOBIG : SYNTH_OK;
}

int synth_vocab_json(char *buf, size_t len)
{
    sbuf b;
    sb_init(&b, buf, len);
    sb_puts(&b, "{\n  \"version\": 1,\n  \"findings\": [");
    for (int f = 0; f < SYNTH_NFINDINGS; f++)
        sb_printf(&b, "%s\"%s\"", f ? ", " : "", FINDING_NAME[f]);
    sb_puts(&b, "],\n  \"locations\": [");
    for (int l = 0; l < SYNTH_NLOCATIONS; l++)
        sb_printf(&b, "%s\"%s\"", l ? ", " : "", LOCATION_NAME[l]);
    sb_puts(&b, "],\n  \"pairs\": [");
    int first = 1;
    for (int f = 0; f < SYNTH_NFINDINGS; f++)
        for (int l = 0; l < SYNTH_NLOCATIONS; l++)
            if (synth_pair_valid(f, l)) {
                sb_printf(&b, "%s\n    [\"%s\", \"%s\"]", first ? "" : ",", FINDING_NAME[f],
                          LOCATION_NAME[l]);
                first = 0;
            }
    sb_puts(&b, "\n  ],\n  \"attributes\": {\n"
                "    \"nodule\": {\"size_mm\": \"largest diameter in mm (integer)\", "
                "\"count\": \"nodules in that lobe (1-3)\"},\n"
                "    \"mass\": {\"size_mm\": \"diameter in mm (integer)\"},\n"
                "    \"pleural effusion\": {\"size\": [\"small\", \"moderate\", \"large\"]},\n"
                "    \"pneumothorax\": {\"size\": [\"small\", \"moderate\", \"large\"]},\n"
                "    \"cardiomegaly\": {\"severity\": [\"mild\", \"moderate\", \"severe\"]},\n"
                "    \"emphysema\": {\"severity\": [\"mild\", \"moderate\", \"severe\"]}\n"
                "  },\n"
                "  \"compare\": \"label precision compares the set of (finding, location) "
                "pairs; attributes are for finer evaluation\"\n}\n");
    return b.over ? SYNTH_TOOBIG : SYNTH_OK;
}

const char *synth_split_name(int s)
{
    static const char *const n[] = {"train", "val", "test"};
    return s >= 0 && s < 3 ? n[s] : NULL;
}

int synth_split_parse(const char *s, synth_split *out)
{
    for (int i = 0; i < 3; i++)
        if (s && !strcmp(s, synth_split_name(i))) {
            *out = (synth_split)i;
            return SYNTH_OK;
        }
    return SYNTH_INVAL;
}

int synth_size_parse(const char *s, synth_size *out)
{
    if (s && !strcmp(s, "default")) {
        *out = SYNTH_SIZE_DEFAULT;
        return SYNTH_OK;
    }
    if (s && !strcmp(s, "small")) {
        *out = SYNTH_SIZE_SMALL;
        return SYNTH_OK;
    }
    return SYNTH_INVAL;
}

/* ---- the phantom ------------------------------------------------------------------ */

/* Tissue labels: the painting alphabet (at most 32, masks are bit sets). */
enum {
    L_OUT, L_FAT, L_MUSCLE, L_LIVER, L_LUNG_R, L_LUNG_L, L_VESSEL, L_HEART, L_BLOOD, L_BONE,
    L_MARROW, L_DISC, L_CSF, L_AIRWAY, L_NODULE, L_MASS, L_FLUID, L_PTX, L_CONSOL, L_BULLA,
    L_ATEL, /* the collapsed lung under a pneumothorax */
    L_NLAB
};
#define LB(l) (1u << (l))
#define M_SOFT (LB(L_FAT) | LB(L_MUSCLE) | LB(L_LIVER))
#define M_LUNG (LB(L_LUNG_R) | LB(L_LUNG_L) | LB(L_VESSEL))

enum { OP_QUAD, OP_CAPS, OP_LUNG, OP_EFFUSION, OP_PTX, OP_CONSOL };

#define BIG 1e6 /* "unbounded" in mm */

typedef struct op {
    unsigned char kind, label, side;
    unsigned char lobe; /* OP_CONSOL: the lobe; OP_PTX: 1 for the collapsed lung, 0 the air */
    uint32_t mask;
    double c[3];        /* quad centre, capsule start, consolidation centre, collapse centre */
    double w[3];        /* quad and consolidation 1/a^2 per axis (0: unbounded) */
    double q[3];        /* capsule end */
    double r;           /* capsule radius, pneumothorax factor, effusion thickness */
    double zlo, zhi;    /* quad z slab; effusion: lung base and height */
    double lo[3], hi[3]; /* bounding box, patient frame */
    int has_ell;         /* predicates: true only inside the ellipsoid (ec, ew) */
    double ec[3], ew[3];
} op;

typedef struct lungdef {
    double c[3], a[3];
    double dome_base, dome_h; /* the diaphragm: z = base + h (1 - r^2) under the lung */
} lungdef;

#define PH_MAX_OPS 768

typedef struct phantom {
    double sc[3];  /* body scale */
    double body[2], fat;
    double cav[2]; /* thoracic cavity semi-axes: lungs stay inside */
    double mid;    /* lungs keep |x| >= mid */
    lungdef lung[2]; /* 0 right, 1 left */
    double heart_c[3], heart_a[3];
    double spine_y, vert_z[24];
    int nvert;
    double hu[L_NLAB]; /* patient-level tissue HU */
    double lung_grad;  /* HU from anterior to posterior lung (dependent density) */
    synth_findings f;
    double rep[SYNTH_MAX_LABELS][3];
    double lm[SYNTH_NLANDMARKS][3];
    int nops;
    op ops[PH_MAX_OPS];
} phantom;

static int side_sign(int s) { return s == 0 ? 1 : -1; }

static int lung_in(const phantom *ph, int s, const double p[3])
{
    const lungdef *L = &ph->lung[s];
    if (side_sign(s) * p[0] < ph->mid)
        return 0;
    double x = (p[0] - L->c[0]) / L->a[0], y = (p[1] - L->c[1]) / L->a[1],
           z = (p[2] - L->c[2]) / L->a[2];
    double r2 = x * x + y * y;
    if (r2 + z * z > 1)
        return 0;
    double cx = p[0] / ph->cav[0], cy = p[1] / ph->cav[1];
    if (cx * cx + cy * cy > 1)
        return 0;
    return p[2] >= L->dome_base + L->dome_h * (1 - r2);
}

/* The y of the lung's posterior surface at (x, z): the back of its
 * ellipsoid or of the thoracic cavity, whichever is further forward; the
 * cavity's back where the ellipsoid does not reach (x, z). */
static double lung_back(const phantom *ph, int s, double x, double z)
{
    const lungdef *L = &ph->lung[s];
    double xn = (x - L->c[0]) / L->a[0], zn = (z - L->c[2]) / L->a[2];
    double cx = x / ph->cav[0];
    double cav = cx * cx < 1 ? -ph->cav[1] * sqrt(1 - cx * cx) : -ph->cav[1];
    double r = 1 - xn * xn - zn * zn;
    if (r <= 0)
        return -ph->cav[1];
    double ell = L->c[1] - L->a[1] * sqrt(r);
    return ell > cav ? ell : cav;
}

/* Lobes from two fissures in the lung's own normalised coordinates
 * (u up, v forward, both -1..1): the oblique fissure runs from high behind
 * (u = 0.3 at the back) down and forward to the anterior diaphragm (below
 * and behind it: the lower lobe); on the right the horizontal fissure
 * (u = -0.05) splits the rest into the upper lobe and the anterior wedge
 * of the middle lobe. */
static int lobe_of(const phantom *ph, int s, const double p[3])
{
    const lungdef *L = &ph->lung[s];
    double u = (p[2] - L->c[2]) / L->a[2], v = (p[1] - L->c[1]) / L->a[1];
    if (u < 0.30 - 0.6 * (v + 1))
        return s == 0 ? SYNTH_LOC_RLL : SYNTH_LOC_LLL;
    if (s == 1)
        return SYNTH_LOC_LUL;
    return u > -0.05 ? SYNTH_LOC_RUL : SYNTH_LOC_RML;
}

static int heart_in(const phantom *ph, const double p[3], double pad)
{
    double t = 0;
    for (int m = 0; m < 3; m++) {
        double d = (p[m] - ph->heart_c[m]) / (ph->heart_a[m] + pad);
        t += d * d;
    }
    return t <= 1;
}

/* Lung parenchyma away from the mediastinum (heart, aorta, spine): where
 * findings are placed and sampled. */
static int lung_ok(const phantom *ph, int s, const double p[3])
{
    return lung_in(ph, s, p) && !heart_in(ph, p, 6) && fabs(p[0]) > 40 * ph->sc[0];
}

static int op_pred(const phantom *ph, const op *o, const double p[3])
{
    switch (o->kind) {
    case OP_LUNG: return lung_in(ph, o->side, p);
    case OP_EFFUSION: {
        if (side_sign(o->side) * p[0] <= 0)
            return 0;
        double f = (o->zlo + o->zhi - p[2]) / o->zhi;
        if (f <= 0)
            return 0;
        /* supine: the fluid layers posteriorly, thickest at the base, a
         * layer measured from the lung's own posterior surface (the lung
         * narrows toward its base, far from the chest wall) */
        return p[1] < lung_back(ph, o->side, p[0], p[2]) + o->r * sqrt(f < 1 ? f : 1);
    }
    case OP_PTX: {
        if (side_sign(o->side) * p[0] <= 0)
            return 0;
        double q[3];
        for (int m = 0; m < 3; m++)
            q[m] = o->c[m] + (p[m] - o->c[m]) / o->r;
        return lung_in(ph, o->side, q) == o->lobe;
    }
    case OP_CONSOL: {
        if (side_sign(o->side) * p[0] <= 0)
            return 0;
        double t = 0;
        for (int m = 0; m < 3; m++) {
            double d = p[m] - o->c[m];
            t += d * d * o->w[m];
        }
        return t <= 1 && lobe_of(ph, o->side, p) == o->lobe;
    }
    default: return 0;
    }
}

static op *ph_op(phantom *ph, int kind, int label, uint32_t mask)
{
    assert(ph->nops < PH_MAX_OPS);
    if (ph->nops >= PH_MAX_OPS)
        return NULL;
    op *o = &ph->ops[ph->nops++];
    memset(o, 0, sizeof *o);
    o->kind = (unsigned char)kind;
    o->label = (unsigned char)label;
    o->mask = mask;
    return o;
}

/* An ellipsoid (a semi-axis <= 0: unbounded along that axis, so a
 * cylinder) cut to zlo <= z <= zhi. */
static void add_quad(phantom *ph, int label, uint32_t mask, const double c[3], double ax, double ay,
                     double az, double zlo, double zhi)
{
    op *o = ph_op(ph, OP_QUAD, label, mask);
    if (!o)
        return;
    const double a[3] = {ax, ay, az};
    for (int m = 0; m < 3; m++) {
        o->c[m] = c[m];
        o->w[m] = a[m] > 0 ? 1.0 / (a[m] * a[m]) : 0;
        o->lo[m] = a[m] > 0 ? c[m] - a[m] : -BIG;
        o->hi[m] = a[m] > 0 ? c[m] + a[m] : BIG;
    }
    o->zlo = zlo;
    o->zhi = zhi;
    if (o->lo[2] < zlo)
        o->lo[2] = zlo;
    if (o->hi[2] > zhi)
        o->hi[2] = zhi;
}

static void add_ellipsoid(phantom *ph, int label, uint32_t mask, const double c[3], const double a[3])
{
    add_quad(ph, label, mask, c, a[0], a[1], a[2], -BIG, BIG);
}

static void add_caps(phantom *ph, int label, uint32_t mask, const double p[3], const double q[3],
                     double r)
{
    op *o = ph_op(ph, OP_CAPS, label, mask);
    if (!o)
        return;
    for (int m = 0; m < 3; m++) {
        o->c[m] = p[m];
        o->q[m] = q[m];
        o->lo[m] = fmin(p[m], q[m]) - r;
        o->hi[m] = fmax(p[m], q[m]) + r;
    }
    o->r = r;
}

/* A predicate region of lung s: it lies inside that lung's ellipsoid,
 * which bounds each scanline before the predicate is tested. */
static op *add_pred(phantom *ph, int kind, int label, uint32_t mask, int side, const double lo[3],
                    const double hi[3])
{
    op *o = ph_op(ph, kind, label, mask);
    if (!o)
        return NULL;
    o->side = (unsigned char)side;
    memcpy(o->lo, lo, sizeof o->lo);
    memcpy(o->hi, hi, sizeof o->hi);
    o->has_ell = 1;
    for (int m = 0; m < 3; m++) {
        o->ec[m] = ph->lung[side].c[m];
        o->ew[m] = 1 / (ph->lung[side].a[m] * ph->lung[side].a[m]);
    }
    return o;
}

static void lung_box(const phantom *ph, int s, double lo[3], double hi[3])
{
    for (int m = 0; m < 3; m++) {
        lo[m] = ph->lung[s].c[m] - ph->lung[s].a[m];
        hi[m] = ph->lung[s].c[m] + ph->lung[s].a[m];
    }
}

/* A point of the lobe at least `margin` mm inside the lung along each
 * axis; the margin halves when the lobe is too small for it. */
static void sample_lobe(const phantom *ph, synth_rng *r, int lobe, double margin, double out[3])
{
    int s = lobe_side(lobe);
    double lo[3], hi[3];
    lung_box(ph, s, lo, hi);
    for (int pass = 0; pass < 4; pass++, margin *= 0.5) {
        for (int t = 0; t < 4000; t++) {
            double p[3];
            for (int m = 0; m < 3; m++)
                p[m] = U(r, lo[m], hi[m]);
            if (!lung_ok(ph, s, p) || lobe_of(ph, s, p) != lobe)
                continue;
            int ok = 1;
            for (int m = 0; m < 3 && ok; m++)
                for (int sg = -1; sg <= 1 && ok; sg += 2) {
                    double q[3] = {p[0], p[1], p[2]};
                    q[m] += sg * margin;
                    ok = lung_ok(ph, s, q);
                }
            if (ok) {
                memcpy(out, p, sizeof p);
                return;
            }
        }
    }
    memcpy(out, ph->lung[s].c, 3 * sizeof(double)); /* not reached with this anatomy */
}

/* A representative point of a predicate region: the accepted sample
 * nearest the centroid of all accepted samples (a centroid alone can fall
 * outside a crescent). */
static void rep_point(const phantom *ph, synth_rng *r, const op *o, double out[3])
{
    enum { NS = 300 };
    double pts[NS][3], cen[3] = {0, 0, 0};
    int n = 0, s = o->side;
    double lo[3], hi[3];
    lung_box(ph, s, lo, hi);
    for (int m = 0; m < 3; m++) {
        lo[m] = fmax(lo[m], o->lo[m]);
        hi[m] = fmin(hi[m], o->hi[m]);
    }
    for (int t = 0; t < 40000 && n < NS; t++) {
        double p[3];
        for (int m = 0; m < 3; m++)
            p[m] = U(r, lo[m], hi[m]);
        if (!lung_ok(ph, s, p) || !op_pred(ph, o, p))
            continue;
        for (int m = 0; m < 3; m++) {
            pts[n][m] = p[m];
            cen[m] += p[m];
        }
        n++;
    }
    if (n == 0) {
        memcpy(out, ph->lung[s].c, 3 * sizeof(double));
        return;
    }
    double best = INFINITY;
    for (int i = 0; i < n; i++) {
        double d = 0;
        for (int m = 0; m < 3; m++) {
            double e = pts[i][m] - cen[m] / n;
            d += e * e;
        }
        if (d < best) {
            best = d;
            memcpy(out, pts[i], sizeof pts[i]);
        }
    }
}

/* ---- drawing the findings of a patient ----------------------------------------------- */

static int label_cmp(const void *a, const void *b)
{
    const synth_label *x = a, *y = b;
    if (x->finding != y->finding)
        return (int)x->finding - (int)y->finding;
    return (int)x->location - (int)y->location;
}

static int is_pleural(const synth_label *b)
{
    return b->finding == SYNTH_EFFUSION || b->finding == SYNTH_PNEUMOTHORAX;
}

/* Whether adding b to f would make a repeat or a combination that hides a
 * finding: two lesions in one lobe, two pleural findings on one side, a
 * pneumothorax or a large effusion with a lesion of that lung, a moderate
 * effusion with a lesion of the lower lobe under it. */
static int conflicts(const synth_findings *f, const synth_label *b)
{
    for (int i = 0; i < f->n; i++) {
        const synth_label *a = &f->label[i];
        if (a->finding == b->finding && a->location == b->location)
            return 1;
        if (is_pleural(a) && is_pleural(b) && a->location == b->location)
            return 1;
        if (is_lobe(a->location) && is_lobe(b->location) && a->location == b->location)
            return 1;
        const synth_label *p = is_pleural(a) ? a : is_pleural(b) ? b : NULL;
        const synth_label *l = is_lobe(a->location) ? a : is_lobe(b->location) ? b : NULL;
        if (p && l && p != l && side_of(p) == side_of(l)) {
            if (p->finding == SYNTH_PNEUMOTHORAX || p->grade == 3)
                return 1;
            if (p->grade == 2 &&
                (l->location == SYNTH_LOC_RLL || l->location == SYNTH_LOC_LLL))
                return 1;
        }
    }
    return 0;
}

static void draw_findings(synth_rng *r, synth_findings *f)
{
    memset(f, 0, sizeof *f);
    if (chance(r, 0.28)) {
        f->n = 1;
        f->label[0] = (synth_label){SYNTH_NORMAL, SYNTH_LOC_CHEST, 0, 1, 0};
        return;
    }
    static const double nw[] = {0.5, 0.35, 0.15};
    static const double kw[SYNTH_NFINDINGS] = {0, 25, 10, 18, 10, 15, 12, 10};
    static const double consol_w[] = {1, 1, 2, 1, 2};
    static const double g3[] = {0.45, 0.35, 0.20};
    int want = 1 + pickw(r, nw, 3);
    for (int tries = 0; f->n < want && tries < 40; tries++) {
        synth_label b = {0};
        b.finding = (synth_finding)pickw(r, kw, SYNTH_NFINDINGS);
        b.count = 1;
        switch (b.finding) {
        case SYNTH_NODULE:
            b.location = (synth_location)synth_rng_below(r, 5);
            b.size_mm = 6 + (int)floor(22 * pow(synth_rng_uniform(r), 1.5));
            b.count = 1 + pickw(r, (const double[]){0.7, 0.2, 0.1}, 3);
            break;
        case SYNTH_MASS:
            b.location = (synth_location)synth_rng_below(r, 5);
            b.size_mm = 32 + (int)synth_rng_below(r, 34);
            break;
        case SYNTH_CONSOLIDATION:
            b.location = (synth_location)pickw(r, consol_w, 5);
            break;
        case SYNTH_EFFUSION:
        case SYNTH_PNEUMOTHORAX:
            b.location = chance(r, 0.5) ? SYNTH_LOC_RIGHT : SYNTH_LOC_LEFT;
            b.grade = 1 + pickw(r, g3, 3);
            break;
        case SYNTH_CARDIOMEGALY:
            b.location = SYNTH_LOC_HEART;
            b.grade = 1 + pickw(r, (const double[]){0.5, 0.35, 0.15}, 3);
            break;
        case SYNTH_EMPHYSEMA:
            b.location = SYNTH_LOC_LUNGS;
            b.grade = 1 + pickw(r, (const double[]){0.4, 0.4, 0.2}, 3);
            break;
        default: continue;
        }
        if (!conflicts(f, &b))
            f->label[f->n++] = b;
    }
    qsort(f->label, (size_t)f->n, sizeof f->label[0], label_cmp);
}

static const synth_label *find_label(const synth_findings *f, int finding, int loc)
{
    for (int i = 0; i < f->n; i++)
        if ((int)f->label[i].finding == finding && (loc < 0 || (int)f->label[i].location == loc))
            return &f->label[i];
    return NULL;
}

/* ---- building the phantom ---------------------------------------------------------- */

/* Reference anatomy (an adult of scale 1) in mm; P() scales a point. */
static void P(const phantom *ph, double x, double y, double z, double out[3])
{
    out[0] = x * ph->sc[0];
    out[1] = y * ph->sc[1];
    out[2] = z * ph->sc[2];
}

static void caps_ref(phantom *ph, int label, uint32_t mask, double x0, double y0, double z0,
                     double x1, double y1, double z1, double r)
{
    double p[3], q[3];
    P(ph, x0, y0, z0, p);
    P(ph, x1, y1, z1, q);
    add_caps(ph, label, mask, p, q, r * 0.5 * (ph->sc[0] + ph->sc[1]));
}

static void build_anatomy(phantom *ph, synth_rng *r)
{
    const double *sc = ph->sc;
    const double sr = 0.5 * (sc[0] + sc[1]);
    double c[3], lo[3], hi[3];
    const int emph = find_label(&ph->f, SYNTH_EMPHYSEMA, -1)
                         ? find_label(&ph->f, SYNTH_EMPHYSEMA, -1)->grade
                         : 0;
    const synth_label *cm = find_label(&ph->f, SYNTH_CARDIOMEGALY, -1);

    /* body wall: fat, then muscle, rounded off at the shoulders; the neck */
    ph->body[0] = 165 * sc[0];
    ph->body[1] = 115 * sc[1];
    double zs = 125 * sc[2], cap = 50 * sc[2];
    P(ph, 0, 0, 0, c);
    add_quad(ph, L_FAT, LB(L_OUT), c, ph->body[0], ph->body[1], 0, -BIG, zs);
    add_quad(ph, L_MUSCLE, LB(L_FAT), c, ph->body[0] - ph->fat, ph->body[1] - ph->fat, 0, -BIG,
             zs);
    c[2] = zs;
    add_quad(ph, L_FAT, LB(L_OUT), c, ph->body[0], ph->body[1], cap, zs, BIG);
    add_quad(ph, L_MUSCLE, LB(L_FAT), c, ph->body[0] - ph->fat, ph->body[1] - ph->fat,
             cap - ph->fat, zs, BIG);
    P(ph, 0, -5, 0, c);
    add_quad(ph, L_FAT, LB(L_OUT), c, 62 * sc[0], 56 * sc[1], 0, zs, BIG);
    add_quad(ph, L_MUSCLE, LB(L_FAT), c, 62 * sc[0] - 8, 56 * sc[1] - 8, 0, zs, BIG);
    ph->cav[0] = ph->body[0] - ph->fat - 22 * sr;
    ph->cav[1] = ph->body[1] - ph->fat - 22 * sr;
    ph->mid = 8 * sc[0];

    /* lungs: an ellipsoid each inside the cavity, above a diaphragm dome
     * (higher on the right, flattened by emphysema).  Each patient's lungs,
     * domes, heart, ribs and clavicles vary on their own, about as much as
     * adults' do (lung height ~10%, dome level ~1 interspace), beyond the
     * overall size in sc: a rescan must not look like another patient of the
     * same build (docs/dedup.md). */
    static const double lc[2][3] = {{70, -4, 15}, {-72, -6, 10}};
    static const double la[2][3] = {{60, 80, 125}, {55, 77, 118}};
    static const double db[2] = {-105, -112}, dh[2] = {45, 38};
    for (int s = 0; s < 2; s++) {
        lungdef *L = &ph->lung[s];
        double jx = U(r, 0.94, 1.06), jy = U(r, -5, 5), jz = U(r, -8, 8);
        P(ph, lc[s][0] * jx, lc[s][1] + jy, lc[s][2] + jz, L->c);
        for (int m = 0; m < 3; m++)
            L->a[m] = la[s][m] * sc[m] * U(r, 0.9, 1.1);
        L->a[2] += 6 * emph * sc[2];
        L->dome_base = (db[s] - 10 * emph + U(r, -12, 12)) * sc[2];
        L->dome_h = dh[s] * (1 - 0.22 * emph) * sc[2] * U(r, 0.8, 1.2);
        lung_box(ph, s, lo, hi);
        add_pred(ph, OP_LUNG, s ? L_LUNG_L : L_LUNG_R, LB(L_MUSCLE), s, lo, hi);
    }

    /* below the right dome the liver; the mediastinal fat between the lungs */
    P(ph, 60, 0, -150, c);
    add_ellipsoid(ph, L_LIVER, LB(L_MUSCLE), c, (const double[]){105 * sc[0], 85 * sc[1], 92 * sc[2]});
    P(ph, 0, 22, 20, c);
    add_ellipsoid(ph, L_FAT, LB(L_MUSCLE), c, (const double[]){40 * sc[0], 50 * sc[1], 105 * sc[2]});

    /* pulmonary vessels: trunks from each hilum to random lung points,
     * each forking once; emphysema prunes them */
    static const double hil[2][3] = {{45, 5, 18}, {-48, 0, 22}};
    int ntrunk = 9 - 2 * emph;
    for (int s = 0; s < 2; s++) {
        double h[3];
        P(ph, hil[s][0], hil[s][1], hil[s][2], h);
        lung_box(ph, s, lo, hi);
        for (int t = 0; t < ntrunk; t++) {
            double tg[3] = {0, 0, 0};
            for (int k = 0; k < 200; k++) {
                for (int m = 0; m < 3; m++)
                    tg[m] = U(r, lo[m], hi[m]);
                if (lung_in(ph, s, tg) && fabs(tg[0] - h[0]) > 20 * sc[0])
                    break;
            }
            double mid[3], t2[3];
            for (int m = 0; m < 3; m++) {
                mid[m] = h[m] + 0.5 * (tg[m] - h[m]);
                t2[m] = tg[m] + U(r, -30, 30);
            }
            if (!lung_in(ph, s, t2))
                memcpy(t2, tg, sizeof t2);
            add_caps(ph, L_VESSEL, LB(L_LUNG_R) | LB(L_LUNG_L), h, mid, U(r, 3.2, 4.4) * sr);
            add_caps(ph, L_VESSEL, LB(L_LUNG_R) | LB(L_LUNG_L), mid, tg, U(r, 2.0, 2.6) * sr);
            add_caps(ph, L_VESSEL, LB(L_LUNG_R) | LB(L_LUNG_L), mid, t2, U(r, 1.8, 2.3) * sr);
        }
    }

    /* heart in its pericardial fat; cardiomegaly widens it to the left */
    double f = cm ? 1 + 0.12 * (cm->grade + 1.3) : 1;
    double hx = U(r, -8, 8), hy = U(r, -5, 5), hz = U(r, -10, 10);
    P(ph, -26 - 40 * (f - 1) + hx, 26 + hy, -42 - 8 * (f - 1) + hz, ph->heart_c);
    ph->heart_a[0] = 58 * sc[0] * f * U(r, 0.9, 1.1);
    ph->heart_a[1] = 46 * sc[1] * (1 + 0.5 * (f - 1)) * U(r, 0.9, 1.1);
    ph->heart_a[2] = 50 * sc[2] * (1 + 0.4 * (f - 1)) * U(r, 0.9, 1.1);
    uint32_t mh = M_SOFT | M_LUNG;
    double pa[3] = {ph->heart_a[0] + 4, ph->heart_a[1] + 4, ph->heart_a[2] + 4};
    add_ellipsoid(ph, L_FAT, mh, ph->heart_c, pa);
    add_ellipsoid(ph, L_HEART, mh, ph->heart_c, ph->heart_a);

    /* great vessels */
    uint32_t mv = M_SOFT | M_LUNG;
    caps_ref(ph, L_BLOOD, mv, 5, 45, -10, 5, 40, 55, 15);       /* ascending aorta */
    caps_ref(ph, L_BLOOD, mv, 5, 40, 55, -15, 5, 75, 13);       /* arch */
    caps_ref(ph, L_BLOOD, mv, -15, 5, 75, -24, -30, 58, 12);
    caps_ref(ph, L_BLOOD, mv, -24, -30, 58, -22, -32, -200, 12); /* descending */
    caps_ref(ph, L_BLOOD, mv, -10, 50, -5, -15, 25, 28, 13);    /* pulmonary trunk */
    caps_ref(ph, L_BLOOD, mv, -15, 25, 28, 42, 5, 22, 9);       /* right pulmonary artery */
    caps_ref(ph, L_BLOOD, mv, -15, 25, 28, -48, 0, 26, 9);      /* left pulmonary artery */
    caps_ref(ph, L_BLOOD, mv, 30, 30, -15, 28, 25, 110, 10);    /* superior vena cava */
    caps_ref(ph, L_BLOOD, M_SOFT, 25, 0, -95, 25, 0, -220, 12); /* inferior vena cava */

    /* airways, each with a wall where it crosses lung */
    static const double aw[7][7] = {
        {0, 8, 260, 0, 2, 48, 9},     {0, 2, 48, 40, -2, 25, 6.5},   {0, 2, 48, -42, -4, 20, 6},
        {40, -2, 25, 62, -5, 45, 4},  {40, -2, 25, 55, -6, -5, 4.5}, {-42, -4, 20, -60, 0, 40, 4},
        {-42, -4, 20, -62, -12, -10, 4}};
    for (int i = 0; i < 7; i++)
        caps_ref(ph, L_MUSCLE, M_LUNG, aw[i][0], aw[i][1], aw[i][2], aw[i][3], aw[i][4],
                 aw[i][5], aw[i][6] + 1.8);
    for (int i = 0; i < 7; i++)
        caps_ref(ph, L_AIRWAY, M_SOFT | M_LUNG, aw[i][0], aw[i][1], aw[i][2], aw[i][3], aw[i][4],
                 aw[i][5], aw[i][6]);

    /* spine: vertebral bodies (cortex, marrow) with discs, the neural arch
     * around the canal, spinous and transverse processes per level */
    ph->spine_y = -48 * sc[1];
    uint32_t mb = M_SOFT | M_LUNG | LB(L_BLOOD);
    P(ph, 0, -48, 0, c);
    add_quad(ph, L_BONE, mb, c, 16 * sr, 16 * sr, 0, -BIG, BIG);
    add_quad(ph, L_MARROW, LB(L_BONE), c, 13 * sr, 13 * sr, 0, -BIG, BIG);
    P(ph, 0, -76, 0, c);
    add_quad(ph, L_BONE, mb, c, 13 * sr, 13 * sr, 0, -BIG, BIG);
    P(ph, 0, -74, 0, c);
    add_quad(ph, L_CSF, LB(L_BONE), c, 8 * sr, 8 * sr, 0, -BIG, BIG);
    ph->nvert = 0;
    double z0 = U(r, -15, 15);
    for (int v = -9; v <= 9; v++) {
        double zv = (z0 + 30 * v) * sc[2];
        if (ph->nvert < 24)
            ph->vert_z[ph->nvert++] = zv;
        P(ph, 0, -48, z0 + 30 * v + 15, c);
        add_quad(ph, L_DISC, LB(L_BONE) | LB(L_MARROW), c, 16.5 * sr, 16.5 * sr, 0,
                 c[2] - 3 * sc[2], c[2] + 3 * sc[2]);
        caps_ref(ph, L_BONE, M_SOFT, 0, -86, z0 + 30 * v, 0, -97, z0 + 30 * v - 12, 5);
        caps_ref(ph, L_BONE, M_SOFT, 6, -72, z0 + 30 * v, 34, -78, z0 + 30 * v + 2, 5);
        caps_ref(ph, L_BONE, M_SOFT, -6, -72, z0 + 30 * v, -34, -78, z0 + 30 * v + 2, 5);
    }

    /* ribs: eleven pairs of arcs around the chest wall, sloping down toward
     * the front; the upper ones shorter and on a narrower ellipse */
    double rx = ph->cav[0] + 9 * sr, ry = ph->cav[1] + 9 * sr;
    const double slope = 90 * U(r, 0.8, 1.2), pitch = 21 * U(r, 0.93, 1.07);
    for (int k = 0; k < 11; k++) {
        double zk = (122 - pitch * k + U(r, -4, 4)) * sc[2];
        double wk = 0.78 + 0.22 * fmin(1.0, k / 3.0);
        double tend = (k == 0 ? 0.55 : k == 1 ? 0.68 : 0.80) * M_PI;
        for (int s = 0; s < 2; s++) {
            enum { SEG = 12 };
            double prev[3] = {0, 0, 0};
            for (int i = 0; i <= SEG; i++) {
                double t = 0.10 * M_PI + (tend - 0.10 * M_PI) * i / SEG;
                double fr = (t - 0.10 * M_PI) / (0.70 * M_PI);
                double p[3] = {side_sign(s) * rx * wk * sin(t), -ry * wk * cos(t),
                               zk - slope * sc[2] * fr * fr};
                if (i)
                    add_caps(ph, L_BONE, M_SOFT, prev, p, 5 * sr);
                memcpy(prev, p, sizeof p);
            }
        }
    }
    /* sternum and clavicles */
    P(ph, 0, 0, 0, c);
    c[1] = ph->cav[1] + 9 * sr;
    add_quad(ph, L_BONE, M_SOFT, c, 15 * sc[0], 6 * sc[1], 0, -70 * sc[2], 95 * sc[2]);
    for (int s = 0; s < 2; s++) {
        double zm = 150 + U(r, -5, 5), zl = 168 + U(r, -14, 14);
        caps_ref(ph, L_BONE, M_SOFT, side_sign(s) * 22, 60, zm, side_sign(s) * 135, 15, zl, 7);
    }
}

static void build_findings(phantom *ph, synth_rng *r)
{
    const synth_findings *f = &ph->f;
    const uint32_t mfind = M_LUNG | LB(L_BULLA);
    double lo[3], hi[3];

    for (int i = 0; i < f->n; i++) /* a default point: the lung */
        memcpy(ph->rep[i], ph->lung[0].c, sizeof ph->rep[i]);

    /* in painting order: emphysema, consolidation, nodules, masses,
     * effusions, pneumothoraces (later ones never erase earlier findings:
     * their masks hold only lung) */
    static const int order[] = {SYNTH_EMPHYSEMA, SYNTH_CONSOLIDATION, SYNTH_NODULE,
                                SYNTH_MASS,      SYNTH_EFFUSION,      SYNTH_PNEUMOTHORAX,
                                SYNTH_CARDIOMEGALY, SYNTH_NORMAL};
    for (size_t oi = 0; oi < sizeof order / sizeof *order; oi++) {
        for (int li = 0; li < f->n; li++) {
            const synth_label *b = &f->label[li];
            if ((int)b->finding != order[oi])
                continue;
            double *rep = ph->rep[li];
            int s = side_of(b);
            switch (b->finding) {
            case SYNTH_EMPHYSEMA: {
                int nb = (b->grade == 1 ? 3 : b->grade == 2 ? 5 : 8) + (int)synth_rng_below(r, 2);
                for (int k = 0; k < nb; k++) {
                    int lobe = chance(r, 0.75)
                                   ? (chance(r, 0.5) ? SYNTH_LOC_RUL : SYNTH_LOC_LUL)
                                   : (int)synth_rng_below(r, 5);
                    double rad = U(r, 5, 13) * (b->grade == 3 ? 1.35 : 1.0), c[3];
                    sample_lobe(ph, r, lobe, rad + 3, c);
                    add_ellipsoid(ph, L_BULLA, M_LUNG, c, (const double[]){rad, rad, rad});
                    if (k == 0)
                        memcpy(rep, c, sizeof c);
                }
                break;
            }
            case SYNTH_CONSOLIDATION: {
                double c[3];
                sample_lobe(ph, r, b->location, 8, c);
                lung_box(ph, s, lo, hi);
                op *o = add_pred(ph, OP_CONSOL, L_CONSOL, M_LUNG, s, lo, hi);
                if (!o)
                    break;
                memcpy(o->c, c, sizeof c);
                o->lobe = (unsigned char)b->location;
                for (int m = 0; m < 3; m++) {
                    double a = U(r, 30, 50) * ph->sc[m];
                    o->w[m] = 1 / (a * a);
                    o->lo[m] = fmax(lo[m], c[m] - a);
                    o->hi[m] = fmin(hi[m], c[m] + a);
                }
                rep_point(ph, r, o, rep);
                for (int k = 0; k < 2; k++) { /* air bronchograms */
                    double q[3];
                    for (int m = 0; m < 3; m++)
                        q[m] = rep[m] + U(r, -25, 25);
                    add_caps(ph, L_AIRWAY, LB(L_CONSOL), rep, q, 1.8);
                }
                break;
            }
            case SYNTH_NODULE: {
                for (int k = 0; k < b->count; k++) {
                    double d = k == 0 ? b->size_mm : U(r, 4, b->size_mm);
                    double rad = 0.5 * d, c[3], a[3];
                    sample_lobe(ph, r, b->location, rad + 4, c);
                    for (int m = 0; m < 3; m++)
                        a[m] = rad * U(r, 0.88, 1.12);
                    add_ellipsoid(ph, L_NODULE, mfind, c, a);
                    if (k == 0)
                        memcpy(rep, c, sizeof c);
                }
                break;
            }
            case SYNTH_MASS: {
                double rad = 0.5 * b->size_mm, c[3];
                sample_lobe(ph, r, b->location, 0.7 * rad, c);
                add_ellipsoid(ph, L_MASS, mfind, c,
                              (const double[]){0.85 * rad, 0.85 * rad * U(r, 0.9, 1.1),
                                               0.85 * rad * U(r, 0.9, 1.1)});
                for (int k = 0; k < 3; k++) { /* lobulations */
                    double q[3], u[3], n = 0;
                    for (int m = 0; m < 3; m++) {
                        u[m] = synth_rng_normal(r);
                        n += u[m] * u[m];
                    }
                    n = sqrt(n) + 1e-9;
                    for (int m = 0; m < 3; m++)
                        q[m] = c[m] + u[m] / n * 0.5 * rad;
                    double rr = rad * U(r, 0.45, 0.65);
                    add_ellipsoid(ph, L_MASS, mfind, q, (const double[]){rr, rr, rr});
                }
                memcpy(rep, c, sizeof c);
                break;
            }
            case SYNTH_EFFUSION: {
                static const double T0[] = {26, 50, 95}, H[] = {60, 120, 190};
                const lungdef *L = &ph->lung[s];
                double t0 = T0[b->grade - 1] * ph->sc[1], h = H[b->grade - 1] * ph->sc[2];
                lo[0] = s == 0 ? 0 : -ph->cav[0];
                hi[0] = s == 0 ? ph->cav[0] : 0;
                lo[1] = -ph->cav[1];
                hi[1] = L->c[1] + L->a[1]; /* the layer follows the lung's back */
                lo[2] = L->dome_base - 30 * ph->sc[2];
                hi[2] = L->dome_base + h;
                op *o = add_pred(ph, OP_EFFUSION, L_FLUID, mfind, s, lo, hi);
                if (!o)
                    break;
                o->r = t0;
                o->zlo = L->dome_base;
                o->zhi = h;
                rep_point(ph, r, o, rep);
                break;
            }
            case SYNTH_PNEUMOTHORAX: {
                static const double fac[] = {0.84, 0.70, 0.55};
                const lungdef *L = &ph->lung[s];
                lung_box(ph, s, lo, hi);
                /* the lung collapses toward its medial base, denser: air
                 * at the apex and laterally, no vessels in it */
                op *o[2] = {add_pred(ph, OP_PTX, L_ATEL, LB(s ? L_LUNG_L : L_LUNG_R), s, lo, hi),
                            add_pred(ph, OP_PTX, L_PTX, mfind, s, lo, hi)};
                if (!o[0] || !o[1])
                    break;
                for (int k = 0; k < 2; k++) {
                    o[k]->r = fac[b->grade - 1];
                    o[k]->lobe = (unsigned char)(k == 0);
                    o[k]->c[0] = side_sign(s) * 35 * ph->sc[0];
                    o[k]->c[1] = L->c[1];
                    o[k]->c[2] = L->dome_base + 20 * ph->sc[2];
                }
                rep_point(ph, r, o[1], rep);
                break;
            }
            case SYNTH_CARDIOMEGALY: memcpy(rep, ph->heart_c, sizeof ph->heart_c); break;
            default: break;
            }
        }
    }
}

static void set_hu(phantom *ph, synth_rng *r)
{
    double *h = ph->hu;
    const synth_label *em = find_label(&ph->f, SYNTH_EMPHYSEMA, -1);
    h[L_OUT] = -1000;
    h[L_FAT] = U(r, -112, -88);
    h[L_MUSCLE] = U(r, 35, 48);
    h[L_LIVER] = U(r, 52, 66);
    h[L_LUNG_R] = h[L_LUNG_L] =
        em ? (em->grade == 1 ? -895 : em->grade == 2 ? -920 : -945) + U(r, -6, 6)
           : U(r, -860, -815);
    h[L_VESSEL] = U(r, 35, 45);
    h[L_HEART] = U(r, 40, 50);
    h[L_BLOOD] = U(r, 40, 50);
    h[L_BONE] = U(r, 700, 950);
    h[L_MARROW] = U(r, 410, 480);
    h[L_DISC] = U(r, 70, 100);
    h[L_CSF] = U(r, 5, 15);
    h[L_AIRWAY] = -995;
    h[L_NODULE] = U(r, 25, 55);
    h[L_MASS] = U(r, 25, 45);
    h[L_FLUID] = U(r, 6, 14);
    h[L_PTX] = -998;
    h[L_CONSOL] = U(r, 20, 40);
    h[L_BULLA] = -995;
    {
        const synth_label *px[2] = {find_label(&ph->f, SYNTH_PNEUMOTHORAX, SYNTH_LOC_RIGHT),
                                        find_label(&ph->f, SYNTH_PNEUMOTHORAX, SYNTH_LOC_LEFT)};
        int g = px[0] ? px[0]->grade : 0;
        if (px[1] && px[1]->grade > g)
            g = px[1]->grade;
        h[L_ATEL] = h[L_LUNG_R] + 60 * g + U(r, 0, 30);
    }
    ph->lung_grad = em ? U(r, 20, 40) : U(r, 45, 90);
}

static void set_landmarks(phantom *ph)
{
    double(*lm)[3] = ph->lm;
    memcpy(lm[SYNTH_LM_HEART], ph->heart_c, sizeof ph->heart_c);
    /* the vertebral body whose centre is nearest the heart's level */
    double zb = ph->vert_z[0];
    for (int v = 1; v < ph->nvert; v++)
        if (fabs(ph->vert_z[v] - ph->heart_c[2]) < fabs(zb - ph->heart_c[2]))
            zb = ph->vert_z[v];
    lm[SYNTH_LM_SPINE][0] = 0;
    lm[SYNTH_LM_SPINE][1] = ph->spine_y;
    lm[SYNTH_LM_SPINE][2] = zb;
    P(ph, -23.4, -30.6, -20, lm[SYNTH_LM_AORTA]); /* on the descending aorta */
    for (int s = 0; s < 2; s++) {
        const lungdef *L = &ph->lung[s];
        double *p = lm[s ? SYNTH_LM_LUNG_L : SYNTH_LM_LUNG_R];
        p[0] = L->c[0] + side_sign(s) * 0.35 * L->a[0];
        p[1] = L->c[1] + 0.35 * L->a[1];
        p[2] = L->c[2] + 0.35 * L->a[2];
    }
    P(ph, 0, 6, 120, lm[SYNTH_LM_TRACHEA]);
    lm[SYNTH_LM_FAT][0] = ph->body[0] - 0.5 * ph->fat;
    lm[SYNTH_LM_FAT][1] = 0;
    lm[SYNTH_LM_FAT][2] = 0;
    P(ph, 60, 0, -95, lm[SYNTH_LM_LIVER]);
    lm[SYNTH_LM_OUTSIDE][0] = 0;
    lm[SYNTH_LM_OUTSIDE][1] = ph->body[1] + 25;
    lm[SYNTH_LM_OUTSIDE][2] = 0;
}

/* The whole phantom of a patient.  The patient seed alone decides it,
 * except for forced findings. */
static void build_phantom(phantom *ph, uint64_t patient_seed, const synth_findings *force)
{
    synth_rng r;
    synth_rng_seed(&r, mix(patient_seed, 0x70686e74)); /* "phnt" */
    memset(ph, 0, offsetof(phantom, ops));
    double s = U(&r, 0.85, 1.15);
    ph->sc[0] = s * U(&r, 0.95, 1.05);
    ph->sc[1] = s * U(&r, 0.93, 1.07);
    ph->sc[2] = U(&r, 0.92, 1.08);
    ph->fat = U(&r, 8, 13) + 40 * (s - 0.85);
    if (force) {
        ph->f = *force;
        qsort(ph->f.label, (size_t)ph->f.n, sizeof ph->f.label[0], label_cmp);
    } else {
        draw_findings(&r, &ph->f);
    }
    ph->f.modality = SYNTH_CT;
    build_anatomy(ph, &r);
    build_findings(ph, &r);
    set_hu(ph, &r);
    set_landmarks(ph);
}

/* ---- grids and painting ------------------------------------------------------------- */

typedef struct grid {
    int n[3];
    double m[3][3], b[3]; /* voxel (i, j, k) -> patient mm: p = m v + b */
    double minv[3][3];    /* patient -> voxel */
    unsigned char *lab;   /* n0*n1*n2 labels, i fastest */
} grid;

static void mat_mul(const double a[3][3], const double b[3][3], double o[3][3])
{
    double t[3][3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            t[i][j] = a[i][0] * b[0][j] + a[i][1] * b[1][j] + a[i][2] * b[2][j];
    memcpy(o, t, sizeof t);
}

static void mat_vec(const double a[3][3], const double v[3], double o[3])
{
    double t[3];
    for (int i = 0; i < 3; i++)
        t[i] = a[i][0] * v[0] + a[i][1] * v[1] + a[i][2] * v[2];
    memcpy(o, t, sizeof t);
}

static void mat_inv(const double a[3][3], double o[3][3])
{
    double c00 = a[1][1] * a[2][2] - a[1][2] * a[2][1];
    double c01 = a[1][2] * a[2][0] - a[1][0] * a[2][2];
    double c02 = a[1][0] * a[2][1] - a[1][1] * a[2][0];
    double det = a[0][0] * c00 + a[0][1] * c01 + a[0][2] * c02;
    double id = 1.0 / det;
    o[0][0] = c00 * id;
    o[1][0] = c01 * id;
    o[2][0] = c02 * id;
    o[0][1] = (a[0][2] * a[2][1] - a[0][1] * a[2][2]) * id;
    o[1][1] = (a[0][0] * a[2][2] - a[0][2] * a[2][0]) * id;
    o[2][1] = (a[0][1] * a[2][0] - a[0][0] * a[2][1]) * id;
    o[0][2] = (a[0][1] * a[1][2] - a[0][2] * a[1][1]) * id;
    o[1][2] = (a[0][2] * a[1][0] - a[0][0] * a[1][2]) * id;
    o[2][2] = (a[0][0] * a[1][1] - a[0][1] * a[1][0]) * id;
}

static void rot_axis(const double u[3], double ang, double R[3][3])
{
    double c = cos(ang), s = sin(ang), t = 1 - c;
    R[0][0] = c + t * u[0] * u[0];
    R[0][1] = t * u[0] * u[1] - s * u[2];
    R[0][2] = t * u[0] * u[2] + s * u[1];
    R[1][0] = t * u[1] * u[0] + s * u[2];
    R[1][1] = c + t * u[1] * u[1];
    R[1][2] = t * u[1] * u[2] - s * u[0];
    R[2][0] = t * u[2] * u[0] - s * u[1];
    R[2][1] = t * u[2] * u[1] + s * u[0];
    R[2][2] = c + t * u[2] * u[2];
}

static void rot_xyz(double ax, double ay, double az, double R[3][3])
{
    double X[3][3], Y[3][3], Z[3][3];
    rot_axis((const double[]){1, 0, 0}, ax, X);
    rot_axis((const double[]){0, 1, 0}, ay, Y);
    rot_axis((const double[]){0, 0, 1}, az, Z);
    mat_mul(Z, Y, R);
    mat_mul(R, X, R);
}

/* A pose: world = R p + t for a patient point p. */
typedef struct pose {
    double R[3][3], t[3];
} pose;

static void pose_apply(const pose *ps, const double p[3], double w[3])
{
    mat_vec(ps->R, p, w);
    for (int m = 0; m < 3; m++)
        w[m] += ps->t[m];
}

/* The grid of voxels v whose world position is A v + a0, for a patient
 * placed by ps: p = R^T (A v + a0 - t). */
static int grid_init(grid *g, const int n[3], const double A[3][3], const double a0[3],
                     const pose *ps)
{
    double Rt[3][3], d[3];
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 3; j++)
            Rt[i][j] = ps->R[j][i];
    mat_mul(Rt, A, g->m);
    for (int m = 0; m < 3; m++)
        d[m] = a0[m] - ps->t[m];
    mat_vec(Rt, d, g->b);
    mat_inv(g->m, g->minv);
    memcpy(g->n, n, sizeof g->n);
    g->lab = calloc((size_t)n[0] * n[1] * n[2], 1);
    return g->lab ? SYNTH_OK : SYNTH_NOMEM;
}

/* The voxel box covering a patient-frame box; 0 when it misses the grid. */
static int vox_box(const grid *g, const double lo[3], const double hi[3], int vlo[3], int vhi[3])
{
    double mn[3] = {INFINITY, INFINITY, INFINITY}, mx[3] = {-INFINITY, -INFINITY, -INFINITY};
    for (int c = 0; c < 8; c++) {
        double p[3], v[3];
        for (int m = 0; m < 3; m++)
            p[m] = ((c >> m) & 1 ? hi[m] : lo[m]) - g->b[m];
        mat_vec(g->minv, p, v);
        for (int m = 0; m < 3; m++) {
            mn[m] = fmin(mn[m], v[m]);
            mx[m] = fmax(mx[m], v[m]);
        }
    }
    for (int m = 0; m < 3; m++) {
        double a = fmax(floor(mn[m]), 0), b = fmin(ceil(mx[m]), g->n[m] - 1);
        if (a > b)
            return 0;
        vlo[m] = (int)a;
        vhi[m] = (int)b;
    }
    return 1;
}

/* Where the line p0 + t d lies inside the ellipsoid (c, w): w holds 1/a^2
 * per axis, 0 for an unbounded axis.  0 when it misses. */
static int span_ell(const double p0[3], const double d[3], const double c[3], const double w[3],
                    double *t0, double *t1)
{
    double A = 0, B = 0, C = -1;
    for (int m = 0; m < 3; m++) {
        double e = p0[m] - c[m];
        A += w[m] * d[m] * d[m];
        B += 2 * w[m] * d[m] * e;
        C += w[m] * e * e;
    }
    if (A < 1e-15) {
        *t0 = -INFINITY;
        *t1 = INFINITY;
        return C <= 0;
    }
    double disc = B * B - 4 * A * C;
    if (disc < 0)
        return 0;
    double sq = sqrt(disc);
    *t0 = (-B - sq) / (2 * A);
    *t1 = (-B + sq) / (2 * A);
    return 1;
}

/* Roots of A t^2 + B t + C <= 0 with A > 0. */
static int span_q(double A, double B, double C, double *t0, double *t1)
{
    double disc = B * B - 4 * A * C;
    if (A < 1e-15 || disc < 0)
        return 0;
    double sq = sqrt(disc);
    *t0 = (-B - sq) / (2 * A);
    *t1 = (-B + sq) / (2 * A);
    return 1;
}

/* The line inside a capsule: a capsule is convex, so its chord is the
 * hull of the chords of its two end spheres and of its cylinder. */
static int span_caps(const double p0[3], const double d[3], const op *o, double *t0, double *t1)
{
    double u[3], wv[3], uu = 0, wu = 0, du = 0, r2 = o->r * o->r;
    for (int m = 0; m < 3; m++) {
        u[m] = o->q[m] - o->c[m];
        wv[m] = p0[m] - o->c[m];
        uu += u[m] * u[m];
        wu += wv[m] * u[m];
        du += d[m] * u[m];
    }
    double lo = INFINITY, hi = -INFINITY, a, b;
    for (int e = 0; e < 2; e++) { /* spheres at both ends */
        double A = 0, B = 0, C = -r2;
        for (int m = 0; m < 3; m++) {
            double x = e ? wv[m] - u[m] : wv[m];
            A += d[m] * d[m];
            B += 2 * d[m] * x;
            C += x * x;
        }
        if (span_q(A, B, C, &a, &b)) {
            lo = fmin(lo, a);
            hi = fmax(hi, b);
        }
    }
    if (uu > 0) { /* the cylinder between the end planes */
        double A = 0, B = 0, C = -r2;
        for (int m = 0; m < 3; m++) {
            double dp = d[m] - du / uu * u[m], wp = wv[m] - wu / uu * u[m];
            A += dp * dp;
            B += 2 * dp * wp;
            C += wp * wp;
        }
        int ok;
        if (A < 1e-15) {
            a = -INFINITY;
            b = INFINITY;
            ok = C <= 0;
        } else {
            ok = span_q(A, B, C, &a, &b);
        }
        if (ok) { /* 0 <= (wu + t du) / uu <= 1 */
            if (fabs(du) > 1e-15) {
                double s0 = -wu / du, s1 = (uu - wu) / du;
                a = fmax(a, fmin(s0, s1));
                b = fmin(b, fmax(s0, s1));
            } else if (wu < 0 || wu > uu) {
                ok = 0;
            }
            if (ok && a <= b) {
                lo = fmin(lo, a);
                hi = fmax(hi, b);
            }
        }
    }
    *t0 = lo;
    *t1 = hi;
    return lo <= hi;
}

static void paint(const grid *g, const phantom *ph, const op *o)
{
    int lo[3], hi[3];
    if (!vox_box(g, o->lo, o->hi, lo, hi))
        return;
    const double d[3] = {g->m[0][0], g->m[1][0], g->m[2][0]}; /* one step along i */
    const uint32_t mask = o->mask;
    const unsigned char label = o->label;
    for (int k = lo[2]; k <= hi[2]; k++)
        for (int j = lo[1]; j <= hi[1]; j++) {
            double p0[3];
            for (int m = 0; m < 3; m++)
                p0[m] = g->m[m][1] * j + g->m[m][2] * k + g->b[m];
            unsigned char *row = g->lab + ((size_t)k * g->n[1] + j) * g->n[0];
            double t0, t1;
            int ok;
            if (o->kind == OP_QUAD) {
                ok = span_ell(p0, d, o->c, o->w, &t0, &t1);
                if (ok && fabs(d[2]) > 1e-12) {
                    double ta = (o->zlo - p0[2]) / d[2], tb = (o->zhi - p0[2]) / d[2];
                    t0 = fmax(t0, fmin(ta, tb));
                    t1 = fmin(t1, fmax(ta, tb));
                } else if (ok && (p0[2] < o->zlo || p0[2] > o->zhi)) {
                    ok = 0;
                }
            } else if (o->kind == OP_CAPS) {
                ok = span_caps(p0, d, o, &t0, &t1);
            } else if (o->has_ell) {
                ok = span_ell(p0, d, o->ec, o->ew, &t0, &t1);
            } else {
                ok = 1;
                t0 = -INFINITY;
                t1 = INFINITY;
            }
            if (!ok)
                continue;
            double a = fmax(ceil(t0), lo[0]), b = fmin(floor(t1), hi[0]);
            if (a > b)
                continue;
            const int ia = (int)a, ib = (int)b;
            if (o->kind == OP_QUAD || o->kind == OP_CAPS) {
                for (int i = ia; i <= ib; i++)
                    if (mask >> row[i] & 1)
                        row[i] = label;
                continue;
            }
            for (int i = ia; i <= ib; i++) {
                if (!(mask >> row[i] & 1))
                    continue;
                double p[3] = {p0[0] + i * d[0], p0[1] + i * d[1], p0[2] + i * d[2]};
                if (op_pred(ph, o, p))
                    row[i] = label;
            }
        }
}

static void paint_all(const grid *g, const phantom *ph)
{
    for (int i = 0; i < ph->nops; i++)
        paint(g, ph, &ph->ops[i]);
}

/* ---- the CT ------------------------------------------------------------------------ */

typedef struct geom_size {
    int ct_n;          /* in-plane voxels */
    double ct_sp[2];   /* in-plane spacing range */
    const double *dz;  /* slice spacings to draw from, with weights */
    const double *dzw;
    int ndz;
    int cr_n;          /* radiograph pixels per side */
    double cr_px, cr_dy;
} geom_size;

static const double DZ_DEF[] = {2.5, 3, 4, 5, 6, 7.5, 8}, DZW_DEF[] = {4, 8, 12, 25, 26, 15, 10};
static const double DZ_SMALL[] = {6, 8, 10}, DZW_SMALL[] = {1, 2, 1};
static const geom_size GEOM[2] = {
    {96, {3.6, 4.4}, DZ_DEF, DZW_DEF, 7, 224, 1.9, 4.0},
    {64, {5.6, 6.6}, DZ_SMALL, DZW_SMALL, 3, 128, 3.3, 6.0},
};

static int render_ct(const phantom *ph, const geom_size *gs, const synth_req *rq,
                     synth_rng *r, uint64_t noise_seed, synth_study *st)
{
    /* spacing: in-plane wide enough for the body, slices covering the lungs */
    double sp = U(r, gs->ct_sp[0], gs->ct_sp[1]);
    sp = fmax(sp, (2 * ph->body[0] + 60) / gs->ct_n);
    double dz = gs->dz[pickw(r, gs->dzw, gs->ndz)];
    int n[3] = {gs->ct_n, gs->ct_n, (int)ceil(280 * ph->sc[2] / dz)};
    if (n[2] > 160)
        n[2] = 160;

    /* storage: RAS or LPS (x and y reversed), sometimes slices top-down */
    int lps = rq->storage == SYNTH_STORE_LPS ||
              (rq->storage == SYNTH_STORE_RANDOM && chance(r, 0.5));
    double fz = chance(r, 0.25) ? -1 : 1;
    double F[3][3] = {{lps ? -sp : sp, 0, 0}, {0, lps ? -sp : sp, 0}, {0, 0, fz * dz}};

    /* an oblique grid: a small rotation about a random axis, kept in the affine */
    double u[3], un = 0, Rg[3][3], A[3][3];
    for (int m = 0; m < 3; m++) {
        u[m] = synth_rng_normal(r);
        un += u[m] * u[m];
    }
    un = sqrt(un) + 1e-12;
    for (int m = 0; m < 3; m++)
        u[m] /= un;
    rot_axis(u, U(r, -5, 5) * M_PI / 180, Rg);
    mat_mul(Rg, F, A);

    /* scanner coordinates: a table offset; the patient shifted and turned a
     * little on the table; the field of view centred near the lungs */
    /* (one draw per statement: the order of evaluation inside an argument
     * or initialiser list is unspecified, and another compiler must draw
     * the same phantom) */
    double off[3];
    for (int m = 0; m < 3; m++)
        off[m] = m < 2 ? U(r, -30, 30) : U(r, -400, 400);
    pose ps;
    rot_xyz(0, 0, U(r, -3, 3) * M_PI / 180, ps.R);
    ps.t[0] = off[0] + U(r, -15, 15);
    ps.t[1] = off[1] + U(r, -15, 15);
    ps.t[2] = off[2] + U(r, -10, 10);
    double cg[3];
    cg[0] = off[0] + U(r, -5, 5);
    cg[1] = off[1] + U(r, -5, 5);
    cg[2] = off[2] + 12 * ph->sc[2] + U(r, -8, 8);
    double half[3] = {(n[0] - 1) / 2.0, (n[1] - 1) / 2.0, (n[2] - 1) / 2.0}, a0[3];
    mat_vec(A, half, a0);
    for (int m = 0; m < 3; m++)
        a0[m] = cg[m] - a0[m];

    double noise = rq->ct_noise_sd > 0   ? rq->ct_noise_sd
                   : rq->ct_noise_sd < 0 ? 0
                                         : U(r, 7, 14) * sqrt(5.0 / dz);
    double inter = chance(r, 0.5) ? -1024 : 0;
    double calib = U(r, -4, 4), hu[L_NLAB];
    for (int l = 0; l < L_NLAB; l++)
        hu[l] = ph->hu[l] + (l == L_OUT || l == L_AIRWAY || l == L_PTX || l == L_BULLA
                                 ? 0
                                 : calib + U(r, -2, 2));

    grid g;
    if (grid_init(&g, n, A, a0, &ps))
        return SYNTH_NOMEM;
    size_t nv = (size_t)n[0] * n[1] * n[2];
    int16_t *vol = malloc(nv * sizeof *vol);
    if (!vol) {
        free(g.lab);
        return SYNTH_NOMEM;
    }
    paint_all(&g, ph);

    /* labels to HU: lungs denser toward the back (dependent), noise */
    synth_rng nr;
    synth_rng_seed(&nr, noise_seed);
    const double gy = ph->lung_grad / (2 * ph->cav[1]);
    for (int k = 0; k < n[2]; k++)
        for (int j = 0; j < n[1]; j++) {
            size_t row = ((size_t)k * n[1] + j) * n[0];
            double py0 = g.m[1][1] * j + g.m[1][2] * k + g.b[1];
            for (int i = 0; i < n[0]; i++) {
                int l = g.lab[row + i];
                double h = hu[l];
                if (l == L_LUNG_R || l == L_LUNG_L || l == L_ATEL)
                    h -= gy * (py0 + g.m[1][0] * i);
                if (noise > 0)
                    h += noise * noise_unit(&nr);
                if (h < -1024)
                    h = -1024;
                if (h > 3071)
                    h = 3071;
                vol[row + i] = (int16_t)floor(h - inter + 0.5);
            }
        }
    free(g.lab);

    st->vol = vol;
    st->nx = n[0];
    st->ny = n[1];
    st->nz = n[2];
    st->spacing[0] = sp;
    st->spacing[1] = sp;
    st->spacing[2] = dz;
    memset(st->affine, 0, sizeof st->affine);
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 3; j++)
            st->affine[i][j] = A[i][j];
        st->affine[i][3] = a0[i];
    }
    st->affine[3][3] = 1;
    st->scl_inter = inter;
    for (int l = 0; l < ph->f.n; l++)
        pose_apply(&ps, ph->rep[l], st->finding_ras[l]);
    for (int m = 0; m < SYNTH_NLANDMARKS; m++)
        pose_apply(&ps, ph->lm[m], st->landmark_ras[m]);
    return SYNTH_OK;
}

/* ---- the radiograph ---------------------------------------------------------------- */

/* Linear attenuation (1/mm) of a label at radiographic energies: water
 * 0.019/mm scaled by density from HU; bone attenuates more than its HU
 * alone says (photoelectric effect of calcium). */
static double mu_of(const phantom *ph, int l)
{
    double h = ph->hu[l];
    double f = (l == L_BONE || l == L_MARROW) ? 1 + 1.6 * h / 1000 : 1 + h / 1000;
    return 0.019 * (f > 0 ? f : 0);
}

static int render_cr(const phantom *ph, const geom_size *gs, synth_rng *r, uint64_t noise_seed,
                     synth_study *st)
{
    const int W = gs->cr_n, H = gs->cr_n; /* at most 1024 (a column buffer below) */
    const double px = gs->cr_px, dy = gs->cr_dy;
    int n[3] = {W, H, (int)ceil(2 * (ph->body[1] + 35) / dy)};
    /* column -> patient's left (-x), row -> inferior (-z), depth -> anterior */
    double A[3][3] = {{-px, 0, 0}, {0, 0, dy}, {0, -px, 0}};
    pose ps;
    double rx = U(r, -3, 3), ry = U(r, -4, 4), rz = U(r, -5, 5);
    rot_xyz(rx * M_PI / 180, ry * M_PI / 180, rz * M_PI / 180, ps.R);
    ps.t[0] = U(r, -15, 15);
    ps.t[1] = U(r, -10, 10);
    ps.t[2] = U(r, -20, 20);
    double cen[3] = {0, 0, 15 * ph->sc[2] + U(r, -10, 10)};
    double half[3] = {(n[0] - 1) / 2.0, (n[1] - 1) / 2.0, (n[2] - 1) / 2.0}, a0[3];
    mat_vec(A, half, a0);
    for (int m = 0; m < 3; m++)
        a0[m] = cen[m] - a0[m];
    /* exposure (photons per pixel without the patient) and the display
     * window on -log(transmission), with a gamma: the contrast variety */
    double n0 = exp(U(r, log(6000.0), log(40000.0)));
    double lo = U(r, 0.0, 0.5), hi = U(r, 6.5, 8.5), gam = U(r, 0.8, 1.25);
    double sharp = U(r, 0.5, 1.5);

    grid g;
    if (grid_init(&g, n, A, a0, &ps))
        return SYNTH_NOMEM;
    size_t np = (size_t)W * H;
    double *acc = calloc(np, sizeof *acc), *tmp = malloc(np * sizeof *tmp);
    uint16_t *img = malloc(np * sizeof *img);
    if (!acc || !tmp || !img) {
        free(g.lab);
        free(acc);
        free(tmp);
        free(img);
        return SYNTH_NOMEM;
    }
    paint_all(&g, ph);

    /* the line integral of attenuation along the beam (anterior-posterior) */
    double mu[L_NLAB];
    for (int l = 0; l < L_NLAB; l++)
        mu[l] = mu_of(ph, l) * dy;
    for (int k = 0; k < n[2]; k++) {
        const unsigned char *plane = g.lab + (size_t)k * np;
        for (size_t p = 0; p < np; p++)
            acc[p] += mu[plane[p]];
    }
    free(g.lab);
    /* detector blur, [1 2 1] / 4 along rows then columns, on the line
     * integrals; then transmission with quantum noise (Poisson-like: its
     * SD is sqrt(T / n0), so dense regions are noisier) and the log */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int xl = x ? x - 1 : x, xr = x < W - 1 ? x + 1 : x;
            tmp[(size_t)y * W + x] = 0.25 * (acc[(size_t)y * W + xl] + 2 * acc[(size_t)y * W + x] +
                                             acc[(size_t)y * W + xr]);
        }
    synth_rng nr;
    synth_rng_seed(&nr, noise_seed);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            int yu = y ? y - 1 : y, yd = y < H - 1 ? y + 1 : y;
            double L = 0.25 * (tmp[(size_t)yu * W + x] + 2 * tmp[(size_t)y * W + x] +
                               tmp[(size_t)yd * W + x]);
            double T = exp(-L);
            T += sqrt(T / n0) * noise_unit(&nr);
            if (T < 1e-5)
                T = 1e-5;
            acc[(size_t)y * W + x] = (-log(T) - lo) / (hi - lo);
        }
    /* unsharp masking, as radiograph post-processing does: add back part
     * of the difference to a wide box blur (two separable running sums) */
    const int rad = W / 14;
    for (int y = 0; y < H; y++) {
        const double *src = acc + (size_t)y * W;
        double sum = 0;
        for (int x = -rad; x <= rad; x++)
            sum += src[x < 0 ? 0 : x >= W ? W - 1 : x];
        for (int x = 0; x < W; x++) {
            tmp[(size_t)y * W + x] = sum / (2 * rad + 1);
            int xo = x - rad, xi = x + rad + 1;
            sum += src[xi >= W ? W - 1 : xi] - src[xo < 0 ? 0 : xo];
        }
    }
    for (int x = 0; x < W; x++) {
        double sum = 0, col[1024];
        for (int y = 0; y < H; y++)
            col[y] = tmp[(size_t)y * W + x];
        for (int y = -rad; y <= rad; y++)
            sum += col[y < 0 ? 0 : y >= H ? H - 1 : y];
        for (int y = 0; y < H; y++) {
            tmp[(size_t)y * W + x] = sum / (2 * rad + 1);
            int yo = y - rad, yi = y + rad + 1;
            sum += col[yi >= H ? H - 1 : yi] - col[yo < 0 ? 0 : yo];
        }
    }
    for (size_t p = 0; p < np; p++) {
        double v = acc[p] + sharp * (acc[p] - tmp[p]);
        v = v < 0 ? 0 : v > 1 ? 1 : pow(v, gam);
        img[p] = (uint16_t)floor(v * 65535 + 0.5);
    }
    free(acc);
    free(tmp);

    st->img = img;
    st->width = W;
    st->height = H;
    st->pixel_mm = px;
    for (int l = 0; l < ph->f.n + SYNTH_NLANDMARKS; l++) {
        int is_f = l < ph->f.n;
        const double *p = is_f ? ph->rep[l] : ph->lm[l - ph->f.n];
        double w[3];
        pose_apply(&ps, p, w);
        double *o = is_f ? st->finding_px[l] : st->landmark_px[l - ph->f.n];
        o[0] = (a0[0] - w[0]) / px;
        o[1] = (a0[2] - w[2]) / px;
    }
    return SYNTH_OK;
}

/* ---- one study ---------------------------------------------------------------------- */

void synth_study_free(synth_study *s)
{
    if (!s)
        return;
    free(s->report);
    free(s->vol);
    free(s->img);
    memset(s, 0, sizeof *s);
}

enum { REPORT_MAX = 4096 };

int synth_study_make(const synth_opts *o, const synth_req *rq, synth_study *out,
                         char *eb, size_t el)
{
    if (!o || !rq || !out)
        return util_errf(eb, el, SYNTH_INVAL, "synth: NULL argument");
    if (!(rq->kinds & (SYNTH_VOLUME | SYNTH_IMAGE)) ||
        (rq->kinds & ~(unsigned)(SYNTH_VOLUME | SYNTH_IMAGE)))
        return util_errf(eb, el, SYNTH_INVAL, "synth: kinds = %u, expected a volume and/or an image",
                    rq->kinds);
    if (o->size != SYNTH_SIZE_DEFAULT && o->size != SYNTH_SIZE_SMALL)
        return util_errf(eb, el, SYNTH_INVAL, "synth: size = %d, expected default or small", o->size);
    if (rq->storage < SYNTH_STORE_RANDOM || rq->storage > SYNTH_STORE_LPS)
        return util_errf(eb, el, SYNTH_INVAL, "synth: storage = %d, expected random, RAS or LPS",
                    rq->storage);
    if (!isfinite(rq->ct_noise_sd) || rq->ct_noise_sd > 1000)
        return util_errf(eb, el, SYNTH_INVAL, "synth: ct_noise_sd = %g, expected at most 1000 HU",
                    rq->ct_noise_sd);
    if (rq->findings) {
        int rc = synth_findings_check(rq->findings, eb, el);
        if (rc)
            return rc;
    }
    phantom *ph = malloc(sizeof *ph);
    synth_study s;
    memset(&s, 0, sizeof s);
    s.report = malloc(REPORT_MAX);
    if (!ph || !s.report) {
        free(ph);
        free(s.report);
        return util_errf(eb, el, SYNTH_NOMEM, "synth: out of memory");
    }
    build_phantom(ph, rq->patient_seed, rq->findings);
    const geom_size *gs = &GEOM[o->size];
    int rc = SYNTH_OK;
    if (rq->kinds & SYNTH_VOLUME) {
        synth_rng r;
        synth_rng_seed(&r, mix(rq->acq_seed, 0x43540001)); /* "CT" */
        rc = render_ct(ph, gs, rq, &r, mix(rq->acq_seed, 0x43540002), &s);
    }
    if (!rc && (rq->kinds & SYNTH_IMAGE)) {
        synth_rng r;
        synth_rng_seed(&r, mix(rq->acq_seed, 0x43520001)); /* "CR" */
        rc = render_cr(ph, gs, &r, mix(rq->acq_seed, 0x43520002), &s);
    }
    if (!rc) {
        s.findings = ph->f;
        s.findings.modality = (rq->kinds & SYNTH_VOLUME) ? SYNTH_CT : SYNTH_CR;
        synth_rng r;
        synth_rng_seed(&r, mix(rq->acq_seed, 0x52505254)); /* "RPRT" */
        rc = synth_report(&s.findings, &r, s.report, REPORT_MAX);
        assert(rc == SYNTH_OK);
    }
    free(ph);
    if (rc) {
        synth_study_free(&s);
        return util_errf(eb, el, rc, "synth: %s", synth_strerror(rc));
    }
    *out = s;
    return SYNTH_OK;
}

/* ---- reports ------------------------------------------------------------------------ */

/* Templates hold {keys}: {a} an article chosen by the next word, {sz} the
 * label's measurement, {loc} a location phrase, {side} {other} right or
 * left, {gr} the grade word, {grv} its adverb, {num} two or three, {nod}
 * {nods} {mass} {cons} synonyms.  The first letter of a sentence is
 * capitalised after expansion. */

static const char *const NOD_CT[] = {"nodule", "pulmonary nodule", "nodular opacity",
                                     "solid nodule", "noncalcified nodule"};
static const char *const NOD_CR[] = {"nodule", "pulmonary nodule", "nodular opacity"};
static const char *const NODS_CT[] = {"nodules", "pulmonary nodules", "nodular opacities",
                                      "solid nodules", "noncalcified nodules"};
static const char *const NODS_CR[] = {"nodules", "pulmonary nodules", "nodular opacities"};
static const char *const MASS_CT[] = {"mass", "pulmonary mass", "spiculated mass",
                                      "lobulated mass"};
static const char *const MASS_CR[] = {"mass", "masslike opacity", "pulmonary mass"};
static const char *const CONS_SYN[] = {"consolidation", "focal consolidation",
                                       "airspace consolidation", "airspace opacity",
                                       "patchy airspace consolidation"};

/* Location phrases per lobe, for CT and for radiographs (which show lung
 * zones rather than lobes). */
static const char *const LOBE_CT[5][3] = {
    {"right upper lobe", "right upper lobe", "right upper lobe"},
    {"right middle lobe", "right middle lobe", "right middle lobe"},
    {"right lower lobe", "right lower lobe", "right lung base"},
    {"left upper lobe", "left upper lobe", "left upper lobe"},
    {"left lower lobe", "left lower lobe", "left lung base"},
};
static const char *const LOBE_CR[5][4] = {
    {"right upper lobe", "right upper lung zone", "right upper lung", "right upper lobe"},
    {"right middle lobe", "right mid lung zone", "right middle lobe", "right mid lung"},
    {"right lower lobe", "right lung base", "right base", "right lower lung zone"},
    {"left upper lobe", "left upper lung zone", "left upper lung", "left upper lobe"},
    {"left lower lobe", "left lung base", "left base", "left lower lung zone"},
};

static const char *const T_NOD1_CT[] = {
    "There is {a} {sz} {nod} in the {loc}.", "{a} {sz} {nod} is present in the {loc}.",
    "{sz} {nod} in the {loc}.",              "In the {loc}, there is {a} {sz} {nod}.",
    "{nod} in the {loc} measuring {sz}.",    "The {loc} contains {a} {sz} {nod}.",
};
static const char *const T_NOD1_CR[] = {
    "{a} {sz} {nod} projects over the {loc}.",
    "There is {a} {sz} {nod} in the {loc}.",
    "{nod} in the {loc}, measuring approximately {sz}.",
    "{a} {sz} {nod} is seen in the {loc}.",
};
static const char *const T_NODN[] = {
    "{num} {nods} in the {loc}, the largest measuring {sz}.",
    "There are {num} {nods} in the {loc}, measuring up to {sz}.",
    "{num} {nods} are seen in the {loc}; the largest is {sz}.",
};
static const char *const T_MASS[] = {
    "There is {a} {sz} {mass} in the {loc}.",
    "{a} {sz} {mass} is seen in the {loc}.",
    "{mass} in the {loc} measuring {sz}.",
    "{a} {mass} in the {loc} measures {sz}.",
};
static const char *const T_EFF[] = {
    "There is {a} {gr} {side} pleural effusion.",
    "{gr} {side} pleural effusion.",
    "{gr} {side}-sided pleural effusion.",
    "{a} {gr} pleural effusion is present on the {side}.",
    "{gr} amount of {side} pleural fluid.",
    "{gr} {side} effusion.",
    "{gr} {side} pleural effusion layering dependently.",
};
static const char *const T_EFF_CR_SMALL =
    "Blunting of the {side} costophrenic angle, consistent with {a} {gr} pleural effusion.";
static const char *const T_EFF_BI[] = {
    "{gr} bilateral pleural effusions.",
    "Bilateral {gr} pleural effusions.",
    "There are {gr} bilateral pleural effusions.",
};
static const char *const T_PTX[] = {
    "There is {a} {gr} {side} pneumothorax.",
    "{gr} {side} pneumothorax.",
    "{gr} {side}-sided pneumothorax.",
    "{a} {gr} pneumothorax is present on the {side}.",
};
static const char *const T_PTX_SMALL = "{a} {gr} {side} apical pneumothorax.";
static const char *const T_PTX_CR = "{gr} {side} pneumothorax with a visible visceral pleural line.";
static const char *const T_CONS_CT[] = {
    "{cons} in the {loc}.",
    "There is {cons} in the {loc}.",
    "{cons} involving the {loc}.",
    "{cons} in the {loc} with air bronchograms.",
};
static const char *const T_CONS_CR[] = {
    "{cons} in the {loc}.",
    "There is {cons} in the {loc}.",
    "{cons} involving the {loc}.",
};
static const char *const T_CARD_CT[] = {
    "The heart is {grv} enlarged.",
    "{gr} cardiomegaly.",
    "Cardiomegaly.",
    "The heart is enlarged.",
};
static const char *const T_CARD_CR[] = {
    "The cardiac silhouette is {grv} enlarged.",
    "{gr} cardiomegaly.",
    "Enlarged cardiac silhouette.",
    "Cardiomegaly.",
};
static const char *const T_EMPH_CT[] = {
    "{gr} centrilobular emphysema.",
    "{gr} emphysema with scattered bullae.",
    "Emphysematous changes, {gr}, with bullae predominantly in the upper lobes.",
    "{gr} centrilobular and paraseptal emphysema.",
};
static const char *const T_EMPH_CR[] = {
    "Hyperinflated lungs with flattened hemidiaphragms, consistent with emphysema.",
    "{gr} emphysema.",
    "Emphysematous changes with upper lobe bullae.",
};

static const char *const NEG_EFF[] = {"No pleural effusion.", "No pleural effusions.",
                                      "No evidence of pleural effusion.",
                                      "There is no pleural fluid."};
static const char *const NEG_EFF_OTHER[] = {"No {other} pleural effusion.",
                                            "No effusion on the {other}."};
static const char *const NEG_PTX[] = {"No pneumothorax.", "There is no pneumothorax.",
                                      "No evidence of pneumothorax."};
static const char *const NEG_EFF_PTX[] = {"No pleural effusion or pneumothorax.",
                                          "No pneumothorax or pleural effusion.",
                                          "There is no pleural effusion or pneumothorax."};
static const char *const NEG_CONS[] = {"No focal consolidation.", "No airspace consolidation.",
                                       "No focal airspace consolidation."};
static const char *const NEG_NOD[] = {"No suspicious pulmonary nodules or masses.",
                                      "No pulmonary nodules.", "No suspicious pulmonary nodule.",
                                      "No pulmonary nodule or mass."};
static const char *const NEG_MASS[] = {"No pulmonary mass.", "No lung mass."};
static const char *const NEG_CARD_CT[] = {"Heart size is normal.", "The heart is normal in size.",
                                          "Normal heart size.", "No cardiomegaly."};
static const char *const NEG_CARD_CR[] = {"The cardiac silhouette is normal in size.",
                                          "Heart size is within normal limits.",
                                          "Normal heart size.", "No cardiomegaly."};
static const char *const NEG_EMPH[] = {"No emphysema.", "No emphysematous changes."};
static const char *const CLEAR[] = {"The lungs are clear.", "Lungs are clear.",
                                    "The lungs are clear bilaterally."};
static const char *const CLEAR_ALL = "No focal consolidation, pleural effusion, or pneumothorax.";

static const char *const FILL_CT[][2] = {
    {"The mediastinal contours are within normal limits.", "2"},
    {"No mediastinal or hilar lymphadenopathy.", "2"},
    {"The thoracic aorta is normal in caliber.", "2"},
    {"The central airways are patent.", "2"},
    {"No acute osseous abnormality.", "3"},
    {"The visualized upper abdomen is unremarkable.", "3"},
    {"Mild degenerative changes of the thoracic spine.", "3"},
};
static const char *const FILL_CR[][2] = {
    {"The mediastinal contours are unremarkable.", "2"},
    {"The hilar contours are normal.", "2"},
    {"No acute osseous abnormality.", "3"},
    {"The visualized osseous structures are intact.", "3"},
};

static const char *const IMP_NOD1[] = {"{sz} {loc} {nod}.", "{nod} in the {loc}, {sz}.",
                                       "{loc} {nod} measuring {sz}."};
static const char *const IMP_NODN[] = {"{num} {loc} {nods}, the largest {sz}.",
                                       "{num} {nods} in the {loc}, up to {sz}."};
static const char *const IMP_FOLLOW[] = {
    " Follow-up chest CT in 6 to 12 months is recommended.",
    " Recommend follow-up CT in 3 to 6 months.",
    " Consider follow-up CT according to the Fleischner Society guidelines."};
static const char *const IMP_MASS[] = {
    "{sz} {loc} {mass}, suspicious for malignancy.",
    "{mass} in the {loc} measuring {sz}; tissue sampling is recommended.",
    "{loc} {mass}, {sz}, concerning for malignancy."};
static const char *const IMP_EFF[] = {"{gr} {side} pleural effusion.", "{gr} {side} effusion."};
static const char *const IMP_EFF_BI[] = {"{gr} bilateral pleural effusions.",
                                         "Bilateral {gr} pleural effusions."};
static const char *const IMP_PTX[] = {"{gr} {side} pneumothorax.",
                                      "{gr} {side}-sided pneumothorax."};
static const char *const IMP_CONS[] = {
    "{loc} consolidation, likely pneumonia.",
    "{cons} in the {loc}, compatible with pneumonia in the appropriate clinical setting.",
    "{loc} consolidation."};
static const char *const IMP_CARD[] = {"{gr} cardiomegaly.", "Cardiomegaly."};
static const char *const IMP_EMPH[] = {"{gr} emphysema.", "Emphysema."};
static const char *const IMP_NORMAL_CT[] = {"No acute cardiopulmonary abnormality.",
                                            "Normal CT of the chest.",
                                            "No acute intrathoracic process."};
static const char *const IMP_NORMAL_CR[] = {"No acute cardiopulmonary process.",
                                            "Normal chest radiograph.",
                                            "No acute cardiopulmonary abnormality."};
static const char *const TECH_CT[] = {
    "Technique: Axial CT images of the chest were obtained without intravenous contrast.",
    "Technique: Non-contrast CT of the chest.",
    "Technique: CT of the chest without contrast, axial reconstructions."};
static const char *const TECH_CR[] = {"Technique: Frontal view of the chest.",
                                      "Technique: PA view of the chest.",
                                      "Technique: Single portable AP view of the chest."};
static const char *const COMPARISON[] = {"Comparison: None.",
                                         "Comparison: No prior studies available."};

typedef struct xctx {
    synth_rng *r;
    int cr;
    const synth_label *b; /* may be NULL for label-free sentences */
    const char *sz;
} xctx;

static void expand(const xctx *x, const char *tpl, sbuf *o)
{
    synth_rng *r = x->r;
    const synth_label *b = x->b;
    for (const char *t = tpl; *t;) {
        if (*t != '{') {
            const char *e = strchr(t, '{');
            size_t n = e ? (size_t)(e - t) : strlen(t);
            sb_put(o, t, n);
            t += n;
            continue;
        }
        const char *key = t + 1, *e = strchr(t, '}');
        assert(e != NULL);
        size_t kl = (size_t)(e - key);
        t = e + 1;
#define KEY(s) (kl == sizeof(s) - 1 && !memcmp(key, s, kl))
        if (KEY("a"))
            sb_put(o, "\x01", 1);
        else if (KEY("sz"))
            sb_puts(o, x->sz ? x->sz : "");
        else if (KEY("nod"))
            sb_puts(o, x->cr ? PICK(r, NOD_CR) : PICK(r, NOD_CT));
        else if (KEY("nods"))
            sb_puts(o, x->cr ? PICK(r, NODS_CR) : PICK(r, NODS_CT));
        else if (KEY("mass"))
            sb_puts(o, x->cr ? PICK(r, MASS_CR) : PICK(r, MASS_CT));
        else if (KEY("cons"))
            sb_puts(o, PICK(r, CONS_SYN));
        else if (KEY("loc")) {
            assert(b && is_lobe(b->location));
            int l = b->location - SYNTH_LOC_RUL;
            sb_puts(o, x->cr ? LOBE_CR[l][synth_rng_below(r, 4)]
                             : LOBE_CT[l][synth_rng_below(r, 3)]);
        } else if (KEY("side"))
            sb_puts(o, b && side_of(b) ? "left" : "right");
        else if (KEY("other"))
            sb_puts(o, b && side_of(b) ? "right" : "left");
        else if (KEY("gr"))
            sb_puts(o, b ? synth_grade_name(b->finding, b->grade) : "");
        else if (KEY("grv"))
            sb_puts(o, b && b->grade == 1 ? "mildly" : b && b->grade == 2 ? "moderately" : "severely");
        else if (KEY("num"))
            sb_puts(o, b && b->count == 3 ? "three" : "two");
        else
            assert(!"unknown template key");
#undef KEY
    }
}

/* "an" before a vowel sound: letters a e i o u, and numbers read "eight...",
 * "eleven", "eighteen". */
static int needs_an(const char *w)
{
    while (*w == ' ')
        w++;
    if (*w >= '0' && *w <= '9') {
        size_t k = 0;
        while (w[k] >= '0' && w[k] <= '9')
            k++;
        return w[0] == '8' || (k == 2 && w[0] == '1' && (w[1] == '1' || w[1] == '8'));
    }
    char c = (char)(*w | 0x20);
    return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u';
}

/* Articles resolved, first letter capitalised. */
static void finish(const char *in, sbuf *o)
{
    int started = 0;
    for (const char *c = in; *c; c++) {
        char tmp[3] = {0, 0, 0};
        if (*c == '\x01') {
            tmp[0] = 'a';
            if (needs_an(c + 1))
                tmp[1] = 'n';
        } else {
            tmp[0] = *c;
        }
        if (!started && tmp[0] >= 'a' && tmp[0] <= 'z')
            tmp[0] = (char)(tmp[0] - 'a' + 'A');
        if ((tmp[0] >= 'A' && tmp[0] <= 'Z') || (tmp[0] >= '0' && tmp[0] <= '9'))
            started = 1;
        sb_puts(o, tmp);
    }
}

enum { SENT_MAX = 320, NSENT = 40 };

typedef struct sent {
    char t[SENT_MAX];
    int cat; /* 0 lungs, 1 pleura, 2 heart and mediastinum, 3 other */
} sent;

static void add_sent(sent *S, int *ns, int cat, const xctx *x, const char *tpl)
{
    if (*ns >= NSENT)
        return;
    char raw[SENT_MAX];
    sbuf a, b;
    sb_init(&a, raw, sizeof raw);
    expand(x, tpl, &a);
    sb_init(&b, S[*ns].t, sizeof S[*ns].t);
    finish(raw, &b);
    S[*ns].cat = cat;
    (*ns)++;
}

static void shuffle_sent(synth_rng *r, sent *S, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)synth_rng_below(r, (uint32_t)i + 1);
        if (j != i) {
            sent t = S[i];
            S[i] = S[j];
            S[j] = t;
        }
    }
}

int synth_report(const synth_findings *f, synth_rng *r, char *buf, size_t len)
{
    sbuf out;
    sb_init(&out, buf, len);
    if (!r || synth_findings_check(f, NULL, 0))
        return SYNTH_INVAL;
    const int cr = f->modality == SYNTH_CR;
    char sz[SYNTH_MAX_LABELS][24];
    for (int i = 0; i < f->n; i++) {
        const synth_label *b = &f->label[i];
        sz[i][0] = 0;
        if (b->finding == SYNTH_NODULE && (b->size_mm < 10 || chance(r, 0.5)))
            snprintf(sz[i], sizeof sz[i], "%d mm", b->size_mm);
        else if (b->finding == SYNTH_MASS && chance(r, 0.3))
            snprintf(sz[i], sizeof sz[i], "%d mm", b->size_mm);
        else if (b->finding == SYNTH_NODULE || b->finding == SYNTH_MASS)
            snprintf(sz[i], sizeof sz[i], "%.1f cm", b->size_mm / 10.0);
    }
    const synth_label *eff[2] = {find_label(f, SYNTH_EFFUSION, SYNTH_LOC_RIGHT),
                                     find_label(f, SYNTH_EFFUSION, SYNTH_LOC_LEFT)};
    const int normal = f->label[0].finding == SYNTH_NORMAL;
    const int has_nod = find_label(f, SYNTH_NODULE, -1) != NULL;
    const int has_mass = find_label(f, SYNTH_MASS, -1) != NULL;
    const int has_cons = find_label(f, SYNTH_CONSOLIDATION, -1) != NULL;
    const int has_eff = eff[0] || eff[1];
    const int has_ptx = find_label(f, SYNTH_PNEUMOTHORAX, -1) != NULL;
    const int has_card = find_label(f, SYNTH_CARDIOMEGALY, -1) != NULL;
    const int has_emph = find_label(f, SYNTH_EMPHYSEMA, -1) != NULL;
    const int lung_find = has_nod || has_mass || has_cons || has_eff || has_ptx || has_emph;
    const int bilateral = eff[0] && eff[1] && eff[0]->grade == eff[1]->grade && chance(r, 0.5);

    sent S[NSENT];
    int ns = 0;
    xctx x = {r, cr, NULL, NULL};

    /* positive findings */
    for (int i = 0; i < f->n; i++) {
        const synth_label *b = &f->label[i];
        x.b = b;
        x.sz = sz[i];
        switch (b->finding) {
        case SYNTH_NODULE:
            add_sent(S, &ns, 0, &x,
                     b->count > 1 ? PICK(r, T_NODN) : cr ? PICK(r, T_NOD1_CR) : PICK(r, T_NOD1_CT));
            break;
        case SYNTH_MASS: add_sent(S, &ns, 0, &x, PICK(r, T_MASS)); break;
        case SYNTH_EFFUSION:
            if (bilateral) {
                if (b->location == SYNTH_LOC_RIGHT)
                    add_sent(S, &ns, 1, &x, PICK(r, T_EFF_BI));
            } else if (cr && b->grade == 1 && chance(r, 0.4)) {
                add_sent(S, &ns, 1, &x, T_EFF_CR_SMALL);
            } else {
                add_sent(S, &ns, 1, &x, T_EFF[synth_rng_below(r, cr ? 6 : 7)]);
            }
            break;
        case SYNTH_PNEUMOTHORAX:
            if (b->grade == 1 && chance(r, 0.3))
                add_sent(S, &ns, 1, &x, T_PTX_SMALL);
            else if (cr && chance(r, 0.3))
                add_sent(S, &ns, 1, &x, T_PTX_CR);
            else
                add_sent(S, &ns, 1, &x, PICK(r, T_PTX));
            break;
        case SYNTH_CONSOLIDATION:
            add_sent(S, &ns, 0, &x, cr ? PICK(r, T_CONS_CR) : PICK(r, T_CONS_CT));
            break;
        case SYNTH_CARDIOMEGALY:
            add_sent(S, &ns, 2, &x, cr ? PICK(r, T_CARD_CR) : PICK(r, T_CARD_CT));
            break;
        case SYNTH_EMPHYSEMA:
            add_sent(S, &ns, 0, &x, cr ? PICK(r, T_EMPH_CR) : PICK(r, T_EMPH_CT));
            break;
        default: break;
        }
    }

    /* negations of absent findings: each group with some probability, in
     * random order, at least one (two for a normal study); never one that
     * a label contradicts, never two that say the same */
    enum { G_EFFPTX, G_EFF, G_PTX, G_EFF_OTHER, G_CONS, G_NOD, G_MASS, G_CARD, G_EMPH, G_ALL, NG };
    static const double gp[NG] = {0.3, 0.55, 0.55, 0.3, 0.55, 0.55, 0.25, 0.55, 0.3, 0.3};
    int avail[NG] = {0}, chosen[NG] = {0}, order[NG], nchosen = 0;
    avail[G_EFFPTX] = !has_eff && !has_ptx;
    avail[G_EFF] = !has_eff;
    avail[G_PTX] = !has_ptx;
    avail[G_EFF_OTHER] = has_eff && !(eff[0] && eff[1]);
    avail[G_CONS] = !has_cons;
    avail[G_NOD] = !has_nod && !has_mass;
    avail[G_MASS] = has_nod && !has_mass;
    avail[G_CARD] = !has_card;
    avail[G_EMPH] = !has_emph;
    avail[G_ALL] = normal;
    for (int g = 0; g < NG; g++)
        order[g] = g;
    for (int g = NG - 1; g > 0; g--) {
        int k = (int)synth_rng_below(r, (uint32_t)g + 1), t = order[g];
        order[g] = order[k];
        order[k] = t;
    }
    const int need = normal ? 2 : 1;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < NG; i++) {
            int g = order[i];
            if (!avail[g] || chosen[g] || (pass == 1 && nchosen >= need))
                continue;
            if (pass == 0 && !chance(r, normal ? gp[g] + 0.1 : gp[g]))
                continue;
            chosen[g] = 1;
            nchosen++;
            /* what g says, others need not say again */
            if (g == G_EFFPTX || g == G_ALL)
                avail[G_EFF] = avail[G_PTX] = 0;
            if (g == G_EFF || g == G_PTX || g == G_ALL)
                avail[G_EFFPTX] = 0;
            if (g == G_ALL)
                avail[G_CONS] = 0;
            if (g == G_EFF || g == G_PTX || g == G_EFFPTX || g == G_CONS)
                avail[G_ALL] = 0;
        }
    for (int i = 0; i < NG; i++) {
        int g = order[i];
        if (!chosen[g])
            continue;
        xctx y = x;
        switch (g) {
        case G_EFFPTX: add_sent(S, &ns, 1, &x, PICK(r, NEG_EFF_PTX)); break;
        case G_EFF: add_sent(S, &ns, 1, &x, PICK(r, NEG_EFF)); break;
        case G_PTX: add_sent(S, &ns, 1, &x, PICK(r, NEG_PTX)); break;
        case G_EFF_OTHER:
            y.b = eff[0] ? eff[0] : eff[1];
            add_sent(S, &ns, 1, &y, PICK(r, NEG_EFF_OTHER));
            break;
        case G_CONS: add_sent(S, &ns, 0, &x, PICK(r, NEG_CONS)); break;
        case G_NOD: add_sent(S, &ns, 0, &x, PICK(r, NEG_NOD)); break;
        case G_MASS: add_sent(S, &ns, 0, &x, PICK(r, NEG_MASS)); break;
        case G_CARD:
            add_sent(S, &ns, 2, &x, cr ? PICK(r, NEG_CARD_CR) : PICK(r, NEG_CARD_CT));
            break;
        case G_EMPH: add_sent(S, &ns, 0, &x, PICK(r, NEG_EMPH)); break;
        case G_ALL: add_sent(S, &ns, 1, &x, CLEAR_ALL); break;
        default: break;
        }
    }
    if (!lung_find && (normal || chance(r, 0.7)))
        add_sent(S, &ns, 0, &x, PICK(r, CLEAR));

    /* one or two unrelated normal statements */
    {
        int nf = cr ? 4 : 7, k = 1 + (int)synth_rng_below(r, 2), first = -1;
        for (int i = 0; i < k; i++) {
            int j = (int)synth_rng_below(r, (uint32_t)nf);
            if (j == first)
                continue;
            first = j;
            const char *const *fl = cr ? FILL_CR[j] : FILL_CT[j];
            add_sent(S, &ns, fl[1][0] - '0', &x, fl[0]);
        }
    }

    /* order: by organ (lungs, pleura, heart, other) or free */
    shuffle_sent(r, S, ns);
    if (chance(r, 0.6)) {
        sent T[NSENT];
        int nt = 0;
        for (int c = 0; c < 4; c++)
            for (int i = 0; i < ns; i++)
                if (S[i].cat == c)
                    T[nt++] = S[i];
        memcpy(S, T, (size_t)nt * sizeof *S);
    }

    /* impression */
    sent I[SYNTH_MAX_LABELS + 1];
    int ni = 0;
    if (normal) {
        add_sent(I, &ni, 0, &x, cr ? PICK(r, IMP_NORMAL_CR) : PICK(r, IMP_NORMAL_CT));
    } else {
        const int bi_imp = eff[0] && eff[1] && eff[0]->grade == eff[1]->grade && chance(r, 0.5);
        for (int i = 0; i < f->n; i++) {
            const synth_label *b = &f->label[i];
            x.b = b;
            x.sz = sz[i];
            switch (b->finding) {
            case SYNTH_NODULE: {
                char t[SENT_MAX];
                snprintf(t, sizeof t, "%s%s",
                         b->count > 1 ? PICK(r, IMP_NODN) : PICK(r, IMP_NOD1),
                         !cr && b->size_mm >= 6 && chance(r, 0.35) ? PICK(r, IMP_FOLLOW) : "");
                add_sent(I, &ni, 0, &x, t);
                break;
            }
            case SYNTH_MASS: add_sent(I, &ni, 0, &x, PICK(r, IMP_MASS)); break;
            case SYNTH_EFFUSION:
                if (!bi_imp)
                    add_sent(I, &ni, 0, &x, PICK(r, IMP_EFF));
                else if (b->location == SYNTH_LOC_RIGHT)
                    add_sent(I, &ni, 0, &x, PICK(r, IMP_EFF_BI));
                break;
            case SYNTH_PNEUMOTHORAX: add_sent(I, &ni, 0, &x, PICK(r, IMP_PTX)); break;
            case SYNTH_CONSOLIDATION: add_sent(I, &ni, 0, &x, PICK(r, IMP_CONS)); break;
            case SYNTH_CARDIOMEGALY: add_sent(I, &ni, 0, &x, PICK(r, IMP_CARD)); break;
            case SYNTH_EMPHYSEMA: add_sent(I, &ni, 0, &x, PICK(r, IMP_EMPH)); break;
            default: break;
            }
        }
        shuffle_sent(r, I, ni);
    }

    if (chance(r, 0.5)) {
        sb_puts(&out, cr ? PICK(r, TECH_CR) : PICK(r, TECH_CT));
        sb_puts(&out, "\n");
    }
    if (chance(r, 0.3)) {
        sb_puts(&out, PICK(r, COMPARISON));
        sb_puts(&out, "\n");
    }
    sb_puts(&out, "Findings:");
    for (int i = 0; i < ns; i++) {
        sb_puts(&out, " ");
        sb_puts(&out, S[i].t);
    }
    if (ni > 1 && chance(r, 0.6)) {
        sb_puts(&out, "\nImpression:");
        for (int i = 0; i < ni; i++)
            sb_printf(&out, "\n%d. %s", i + 1, I[i].t);
    } else {
        sb_puts(&out, "\nImpression:");
        for (int i = 0; i < ni; i++) {
            sb_puts(&out, " ");
            sb_puts(&out, I[i].t);
        }
    }
    return out.over ? SYNTH_TOOBIG : SYNTH_OK;
}

/* ---- writing files -------------------------------------------------------------------- */

static int ends_with(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

/* The NIfTI quaternion (b, c, d) and qfac of the rotation part of an
 * affine whose columns are orthogonal (ours are: a rotation times a
 * diagonal). */
static void affine_quatern(const double aff[4][4], double q[3], double *qfac)
{
    double R[3][3];
    for (int j = 0; j < 3; j++) {
        double n = sqrt(aff[0][j] * aff[0][j] + aff[1][j] * aff[1][j] + aff[2][j] * aff[2][j]);
        for (int i = 0; i < 3; i++)
            R[i][j] = aff[i][j] / n;
    }
    double det = R[0][0] * (R[1][1] * R[2][2] - R[1][2] * R[2][1]) -
                 R[0][1] * (R[1][0] * R[2][2] - R[1][2] * R[2][0]) +
                 R[0][2] * (R[1][0] * R[2][1] - R[1][1] * R[2][0]);
    *qfac = det < 0 ? -1 : 1;
    if (det < 0)
        for (int i = 0; i < 3; i++)
            R[i][2] = -R[i][2];
    /* Shepperd: divide by the largest of the four candidates */
    double a, b, c, d, tr = R[0][0] + R[1][1] + R[2][2];
    if (tr > 0) {
        double s = 2 * sqrt(1 + tr);
        a = s / 4;
        b = (R[2][1] - R[1][2]) / s;
        c = (R[0][2] - R[2][0]) / s;
        d = (R[1][0] - R[0][1]) / s;
    } else if (R[0][0] > R[1][1] && R[0][0] > R[2][2]) {
        double s = 2 * sqrt(1 + R[0][0] - R[1][1] - R[2][2]);
        a = (R[2][1] - R[1][2]) / s;
        b = s / 4;
        c = (R[0][1] + R[1][0]) / s;
        d = (R[0][2] + R[2][0]) / s;
    } else if (R[1][1] > R[2][2]) {
        double s = 2 * sqrt(1 + R[1][1] - R[0][0] - R[2][2]);
        a = (R[0][2] - R[2][0]) / s;
        b = (R[0][1] + R[1][0]) / s;
        c = s / 4;
        d = (R[1][2] + R[2][1]) / s;
    } else {
        double s = 2 * sqrt(1 + R[2][2] - R[0][0] - R[1][1]);
        a = (R[1][0] - R[0][1]) / s;
        b = (R[0][2] + R[2][0]) / s;
        c = (R[1][2] + R[2][1]) / s;
        d = s / 4;
    }
    if (a < 0) {
        b = -b;
        c = -c;
        d = -d;
    }
    q[0] = b;
    q[1] = c;
    q[2] = d;
}

int synth_write_nifti(const synth_study *s, const char *path, char *eb, size_t el)
{
    if (!path)
        return util_errf(eb, el, SYNTH_INVAL, "synth: NULL path");
    if (!s || !s->vol)
        return util_errf(eb, el, SYNTH_INVAL, "%s: the study has no volume", path);
    struct nifti_1_header h;
    memset(&h, 0, sizeof h);
    h.sizeof_hdr = 348;
    h.dim[0] = 3;
    h.dim[1] = (short)s->nx;
    h.dim[2] = (short)s->ny;
    h.dim[3] = (short)s->nz;
    for (int i = 4; i < 8; i++)
        h.dim[i] = 1;
    h.datatype = NIFTI_TYPE_INT16;
    h.bitpix = 16;
    double q[3], qfac;
    affine_quatern(s->affine, q, &qfac);
    h.pixdim[0] = (float)qfac;
    for (int i = 0; i < 3; i++)
        h.pixdim[i + 1] = (float)s->spacing[i];
    h.vox_offset = 352;
    h.scl_slope = 1;
    h.scl_inter = (float)s->scl_inter;
    h.xyzt_units = NIFTI_UNITS_MM;
    h.qform_code = NIFTI_XFORM_SCANNER_ANAT;
    h.sform_code = NIFTI_XFORM_SCANNER_ANAT;
    h.quatern_b = (float)q[0];
    h.quatern_c = (float)q[1];
    h.quatern_d = (float)q[2];
    h.qoffset_x = (float)s->affine[0][3];
    h.qoffset_y = (float)s->affine[1][3];
    h.qoffset_z = (float)s->affine[2][3];
    for (int j = 0; j < 4; j++) {
        h.srow_x[j] = (float)s->affine[0][j];
        h.srow_y[j] = (float)s->affine[1][j];
        h.srow_z[j] = (float)s->affine[2][j];
    }
    snprintf(h.descrip, sizeof h.descrip, "medsem synth chest phantom");
    memcpy(h.magic, "n+1", 4);

    static const char ext[4] = {0, 0, 0, 0};
    const size_t nbytes = (size_t)s->nx * s->ny * s->nz * sizeof(int16_t);
    int ok;
    errno = 0;
    if (ends_with(path, ".gz")) {
        gzFile gz = gzopen(path, "wb2");
        if (!gz)
            return util_errf(eb, el, SYNTH_IO, "%s: cannot create: %s", path,
                        errno ? strerror(errno) : "out of memory");
        gzbuffer(gz, 1 << 18);
        ok = gzwrite(gz, &h, sizeof h) == (int)sizeof h && gzwrite(gz, ext, 4) == 4;
        for (size_t off = 0; ok && off < nbytes;) {
            size_t n = nbytes - off < (1u << 30) ? nbytes - off : (1u << 30);
            ok = gzwrite(gz, (const char *)s->vol + off, (unsigned)n) == (int)n;
            off += n;
        }
        int errnum = 0;
        const char *zmsg = ok ? NULL : gzerror(gz, &errnum);
        char zbuf[128] = "";
        if (zmsg)
            snprintf(zbuf, sizeof zbuf, "%s", errnum == Z_ERRNO ? strerror(errno) : zmsg);
        int crc = gzclose(gz);
        if (!ok || crc != Z_OK) {
            remove(path);
            return util_errf(eb, el, SYNTH_IO, "%s: write failed: %s", path,
                        zbuf[0] ? zbuf : crc == Z_ERRNO ? strerror(errno) : "zlib error");
        }
        return SYNTH_OK;
    }
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return util_errf(eb, el, SYNTH_IO, "%s: cannot create: %s", path, strerror(errno));
    ok = fwrite(&h, sizeof h, 1, fp) == 1 && fwrite(ext, 4, 1, fp) == 1 &&
         fwrite(s->vol, 1, nbytes, fp) == nbytes;
    int cerr = fclose(fp);
    if (!ok || cerr) {
        int e = errno;
        remove(path);
        return util_errf(eb, el, SYNTH_IO, "%s: write failed: %s", path, strerror(e));
    }
    return SYNTH_OK;
}

/* libpng reports errors by calling a function that must not return: ours
 * keeps the message and longjmps back; warnings are dropped.  The state a
 * longjmp must see lives on the heap. */
typedef struct pngw_ctx {
    FILE *fp;
    png_structp png;
    png_infop info;
    unsigned char *row;
    char msg[256];
} pngw_ctx;

static void pngw_error(png_structp png, png_const_charp msg)
{
    pngw_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "libpng error");
    png_longjmp(png, 1);
}

static void pngw_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

static void pngw_free(pngw_ctx *c)
{
    if (c->png)
        png_destroy_write_struct(&c->png, c->info ? &c->info : NULL);
    if (c->fp)
        fclose(c->fp);
    free(c->row);
    free(c);
}

/* ---- DICOM ------------------------------------------------------------------ */

/* A Part 10 file, explicit VR little endian, built element by element in
 * tag order (PS3.5 7.1.2: 2-byte lengths for short VRs, 4 for OB/OW). */
typedef struct dcmw {
    unsigned char *b;
    size_t n, cap;
    int oom;
} dcmw;

static void dw_bytes(dcmw *w, const void *p, size_t n)
{
    if (w->oom)
        return;
    if (w->n + n > w->cap) {
        size_t nc = w->cap ? w->cap : 4096;
        while (nc < w->n + n)
            nc *= 2;
        unsigned char *nb = realloc(w->b, nc);
        if (!nb) {
            w->oom = 1;
            return;
        }
        w->b = nb;
        w->cap = nc;
    }
    memcpy(w->b + w->n, p, n);
    w->n += n;
}

static void dw_u16(dcmw *w, unsigned v)
{
    unsigned char b[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    dw_bytes(w, b, 2);
}

static void dw_u32(dcmw *w, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    dw_bytes(w, b, 4);
}

/* A string element, padded to even length (NUL for UI, space otherwise). */
static void dw_str(dcmw *w, unsigned g, unsigned e, const char *vr, const char *v)
{
    size_t n = strlen(v), pad = n & 1;
    dw_u16(w, g);
    dw_u16(w, e);
    dw_bytes(w, vr, 2);
    dw_u16(w, (unsigned)(n + pad));
    dw_bytes(w, v, n);
    if (pad)
        dw_bytes(w, strcmp(vr, "UI") ? " " : "", 1);
}

static void dw_us(dcmw *w, unsigned g, unsigned e, unsigned v)
{
    dw_u16(w, g);
    dw_u16(w, e);
    dw_bytes(w, "US", 2);
    dw_u16(w, 2);
    dw_u16(w, v);
}

static void dw_ow(dcmw *w, unsigned g, unsigned e, const char *vr, const void *p, size_t n)
{
    dw_u16(w, g);
    dw_u16(w, e);
    dw_bytes(w, vr, 2);
    dw_u16(w, 0);
    dw_u32(w, (uint32_t)(n + (n & 1)));
    dw_bytes(w, p, n);
    if (n & 1)
        dw_bytes(w, "", 1);
}

/* A UID under 2.25 (a UUID-derived root, PS3.5 B.2) from two numbers. */
static void dcm_uid(uint64_t a, uint64_t b, char *out, size_t len)
{
    uint64_t h = mix(mix(0x44434d55, a), b), l = mix(h, 0x55494431);
    /* two 64-bit halves as one decimal number would need 128-bit
     * arithmetic: print them as two components instead */
    snprintf(out, len, "2.25.%llu.%llu", (unsigned long long)(h >> 1),
             (unsigned long long)(l >> 1));
}

static void fmt_ds(double v, char *out, size_t len)
{
    snprintf(out, len, "%.6g", fabs(v) < 5e-7 ? 0.0 : v);
}

/* The file meta group and the start of the dataset common to both kinds. */
static void dcm_begin(dcmw *w, const char *sop_class, const char *sop_uid)
{
    unsigned char pre[128] = {0};
    dw_bytes(w, pre, sizeof pre);
    dw_bytes(w, "DICM", 4);
    dcmw m = {0};
    static const unsigned char version[2] = {0, 1};
    dw_ow(&m, 0x0002, 0x0001, "OB", version, 2);
    dw_str(&m, 0x0002, 0x0002, "UI", sop_class);
    dw_str(&m, 0x0002, 0x0003, "UI", sop_uid);
    dw_str(&m, 0x0002, 0x0010, "UI", "1.2.840.10008.1.2.1");
    dw_str(&m, 0x0002, 0x0012, "UI", "2.25.1.1");
    dw_str(&m, 0x0002, 0x0013, "SH", "MEDSEM_SYNTH");
    dw_u16(w, 0x0002);
    dw_u16(w, 0x0000);
    dw_bytes(w, "UL", 2);
    dw_u16(w, 4);
    dw_u32(w, (uint32_t)m.n);
    dw_bytes(w, m.b, m.n);
    w->oom |= m.oom;
    free(m.b);
}

static int dcm_save(dcmw *w, const char *path, char *eb, size_t el)
{
    if (w->oom)
        return util_errf(eb, el, SYNTH_NOMEM, "%s: out of memory", path);
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return util_errf(eb, el, SYNTH_IO, "%s: cannot create: %s", path, strerror(errno));
    int ok = fwrite(w->b, 1, w->n, fp) == w->n;
    ok &= fclose(fp) == 0;
    if (!ok)
        return util_errf(eb, el, SYNTH_IO, "%s: write failed: %s", path, strerror(errno));
    return SYNTH_OK;
}

int synth_write_dicom(const synth_study *s, const char *path, const synth_dicom_ids *ids,
                      char *eb, size_t el)
{
    if (!path || !s || !ids)
        return util_errf(eb, el, SYNTH_INVAL, "synth: NULL argument");
    if (!s->vol && !s->img)
        return util_errf(eb, el, SYNTH_INVAL, "%s: the study has no image", path);
    int vol = s->vol != NULL;
    const char *sop_class = vol ? "1.2.840.10008.5.1.4.1.1.2" : "1.2.840.10008.5.1.4.1.1.1.1";
    char study_uid[64], series_uid[64], sop_uid[64], acc[20], pid[24], pname[40], ds[160], a[32],
        b[32], c[32], d[32], e[32], f[32];
    char dsl[256];
    dcm_uid(ids->seed, ids->study, study_uid, sizeof study_uid);
    dcm_uid(ids->seed, ids->study * 4 + (vol ? 1 : 2), series_uid, sizeof series_uid);
    snprintf(acc, sizeof acc, "S%07llu", (unsigned long long)ids->study);
    snprintf(pid, sizeof pid, "P%06llu", (unsigned long long)ids->patient);
    snprintf(pname, sizeof pname, "Synthetic^%s", pid);
    if (vol && mkdir(path, 0755) && errno != EEXIST)
        return util_errf(eb, el, SYNTH_IO, "%s: cannot create: %s", path, strerror(errno));
    int nfiles = vol ? s->nz : 1;
    /* LPS directions: the affine's columns (RAS) with x and y negated */
    double col[3][3];
    for (int k = 0; k < 3; k++)
        for (int r = 0; r < 3; r++)
            col[k][r] = (r < 2 ? -1 : 1) * s->affine[r][k] / (vol ? s->spacing[k] : 1);
    for (int z = 0; z < nfiles; z++) {
        dcmw w = {0};
        dcm_uid(ids->seed, (ids->study * 4 + (vol ? 1 : 2)) * 100000 + (uint64_t)z, sop_uid,
                sizeof sop_uid);
        dcm_begin(&w, sop_class, sop_uid);
        dw_str(&w, 0x0008, 0x0008, "CS", vol ? "ORIGINAL\\PRIMARY\\AXIAL" : "ORIGINAL\\PRIMARY");
        dw_str(&w, 0x0008, 0x0016, "UI", sop_class);
        dw_str(&w, 0x0008, 0x0018, "UI", sop_uid);
        dw_str(&w, 0x0008, 0x0020, "DA", "20260101");
        dw_str(&w, 0x0008, 0x0050, "SH", acc);
        dw_str(&w, 0x0008, 0x0060, "CS", vol ? "CT" : "DX");
        dw_str(&w, 0x0008, 0x0070, "LO", "medsem synth");
        dw_str(&w, 0x0008, 0x103e, "LO", vol ? "Chest CT phantom" : "Chest radiograph PA");
        dw_str(&w, 0x0010, 0x0010, "PN", pname);
        dw_str(&w, 0x0010, 0x0020, "LO", pid);
        dw_str(&w, 0x0018, 0x0015, "CS", "CHEST");
        if (vol) {
            fmt_ds(s->spacing[2], ds, sizeof ds);
            dw_str(&w, 0x0018, 0x0050, "DS", ds);
        }
        dw_str(&w, 0x0020, 0x000d, "UI", study_uid);
        dw_str(&w, 0x0020, 0x000e, "UI", series_uid);
        snprintf(ds, sizeof ds, "%d", z + 1);
        dw_str(&w, 0x0020, 0x0013, "IS", ds);
        if (vol) {
            fmt_ds(-(s->affine[0][2] * z + s->affine[0][3]), a, sizeof a);
            fmt_ds(-(s->affine[1][2] * z + s->affine[1][3]), b, sizeof b);
            fmt_ds(s->affine[2][2] * z + s->affine[2][3], c, sizeof c);
            snprintf(ds, sizeof ds, "%s\\%s\\%s", a, b, c);
            dw_str(&w, 0x0020, 0x0032, "DS", ds);
            fmt_ds(col[0][0], a, sizeof a), fmt_ds(col[0][1], b, sizeof b);
            fmt_ds(col[0][2], c, sizeof c), fmt_ds(col[1][0], d, sizeof d);
            fmt_ds(col[1][1], e, sizeof e), fmt_ds(col[1][2], f, sizeof f);
            snprintf(dsl, sizeof dsl, "%s\\%s\\%s\\%s\\%s\\%s", a, b, c, d, e, f);
            dw_str(&w, 0x0020, 0x0037, "DS", dsl);
        } else {
            dw_str(&w, 0x0020, 0x0020, "CS", "L\\F");
        }
        dw_us(&w, 0x0028, 0x0002, 1);
        dw_str(&w, 0x0028, 0x0004, "CS", "MONOCHROME2");
        dw_us(&w, 0x0028, 0x0010, (unsigned)(vol ? s->ny : s->height));
        dw_us(&w, 0x0028, 0x0011, (unsigned)(vol ? s->nx : s->width));
        if (vol) {
            fmt_ds(s->spacing[1], a, sizeof a), fmt_ds(s->spacing[0], b, sizeof b);
        } else {
            fmt_ds(s->pixel_mm, a, sizeof a), fmt_ds(s->pixel_mm, b, sizeof b);
        }
        snprintf(ds, sizeof ds, "%s\\%s", a, b);
        dw_str(&w, 0x0028, 0x0030, "DS", ds);
        dw_us(&w, 0x0028, 0x0100, 16);
        dw_us(&w, 0x0028, 0x0101, 16);
        dw_us(&w, 0x0028, 0x0102, 15);
        dw_us(&w, 0x0028, 0x0103, vol ? 1 : 0);
        if (vol) {
            fmt_ds(s->scl_inter, ds, sizeof ds);
            dw_str(&w, 0x0028, 0x1052, "DS", ds);
            dw_str(&w, 0x0028, 0x1053, "DS", "1");
        }
        size_t np = vol ? (size_t)s->nx * s->ny : (size_t)s->width * s->height;
        const void *px = vol ? (const void *)(s->vol + (size_t)z * np) : (const void *)s->img;
        /* little endian on disk: the host's order is checked once */
        const uint16_t one = 1;
        if (*(const unsigned char *)&one == 1) {
            dw_ow(&w, 0x7fe0, 0x0010, "OW", px, np * 2);
        } else {
            unsigned char *sw = malloc(np * 2);
            if (!sw) {
                free(w.b);
                return util_errf(eb, el, SYNTH_NOMEM, "%s: out of memory", path);
            }
            for (size_t i = 0; i < np; i++) {
                uint16_t v = ((const uint16_t *)px)[i];
                sw[2 * i] = (unsigned char)v;
                sw[2 * i + 1] = (unsigned char)(v >> 8);
            }
            dw_ow(&w, 0x7fe0, 0x0010, "OW", sw, np * 2);
            free(sw);
        }
        char fpath[4096];
        if (vol)
            snprintf(fpath, sizeof fpath, "%s/%04d.dcm", path, z);
        else
            snprintf(fpath, sizeof fpath, "%s", path);
        int rc = dcm_save(&w, fpath, eb, el);
        free(w.b);
        if (rc)
            return rc;
    }
    return SYNTH_OK;
}

int synth_write_png(const synth_study *s, const char *path, char *eb, size_t el)
{
    if (!path)
        return util_errf(eb, el, SYNTH_INVAL, "synth: NULL path");
    if (!s || !s->img)
        return util_errf(eb, el, SYNTH_INVAL, "%s: the study has no radiograph", path);
    pngw_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return util_errf(eb, el, SYNTH_NOMEM, "%s: out of memory", path);
    c->row = malloc((size_t)s->width * 2);
    if (!c->row) {
        pngw_free(c);
        return util_errf(eb, el, SYNTH_NOMEM, "%s: out of memory", path);
    }
    c->fp = fopen(path, "wb");
    if (!c->fp) {
        int e = errno;
        pngw_free(c);
        return util_errf(eb, el, SYNTH_IO, "%s: cannot create: %s", path, strerror(e));
    }
    c->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, c, pngw_error, pngw_warning);
    if (c->png)
        c->info = png_create_info_struct(c->png);
    if (!c->png || !c->info) {
        pngw_free(c);
        remove(path);
        return util_errf(eb, el, SYNTH_NOMEM, "%s: out of memory", path);
    }
    if (setjmp(png_jmpbuf(c->png))) {
        int r = util_errf(eb, el, SYNTH_IO, "%s: write failed: %s", path, c->msg);
        pngw_free(c);
        remove(path);
        return r;
    }
    png_init_io(c->png, c->fp);
    png_set_IHDR(c->png, c->info, (png_uint_32)s->width, (png_uint_32)s->height, 16,
                 PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    png_write_info(c->png, c->info);
    for (int y = 0; y < s->height; y++) {
        const uint16_t *src = s->img + (size_t)y * s->width;
        for (int x = 0; x < s->width; x++) { /* PNG samples are big-endian */
            c->row[2 * x] = (unsigned char)(src[x] >> 8);
            c->row[2 * x + 1] = (unsigned char)(src[x] & 0xff);
        }
        png_write_row(c->png, c->row);
    }
    png_write_end(c->png, NULL);
    png_destroy_write_struct(&c->png, &c->info);
    FILE *fp = c->fp;
    c->fp = NULL;
    pngw_free(c);
    if (fclose(fp) != 0) {
        int e = errno;
        remove(path);
        return util_errf(eb, el, SYNTH_IO, "%s: write failed: %s", path, strerror(e));
    }
    return SYNTH_OK;
}

/* ---- a whole dataset ---------------------------------------------------------------- */

/* Ids carry the split in their range so that splits never share a
 * patient: train P000000-P699999, val P700000-P849999, test P850000-;
 * studies likewise with one more digit. */
static const size_t PATIENT_BASE[3] = {0, 700000, 850000};
static const size_t PATIENT_RANGE[3] = {700000, 150000, 150000};

typedef struct item {
    int kind;                   /* SYNTH_VOLUME or SYNTH_IMAGE */
    size_t file_no, patient, study;
    long long pair, rescan_of;  /* study numbers, or -1 */
    char *line;                 /* the manifest line, once made */
    char *csv;                  /* DICOM: its reports.csv row */
    uint64_t bytes;
} item;

typedef struct job {
    const char *dir;
    const synth_opts *o;
    item *items;
    size_t n;
    pthread_mutex_t mu;
    size_t next, done;
    int err;
    char msg[1024];
} job;

static int make_item(const job *J, item *it, char *eb, size_t el)
{
    const synth_opts *o = J->o;
    const char *split = synth_split_name(o->split);
    synth_req rq = {0};
    rq.patient_seed = mix(mix(o->seed, 0x50415449), it->patient); /* "PATI" */
    rq.acq_seed = mix(mix(o->seed, 0x41435153), it->study);       /* "ACQS" */
    rq.kinds = (unsigned)it->kind;
    synth_study s;
    int rc = synth_study_make(o, &rq, &s, eb, el);
    if (rc)
        return rc;
    const int vol = it->kind == SYNTH_VOLUME, dcm = o->format == SYNTH_FORMAT_DICOM;
    char rel[96], path[4096];
    if (dcm) /* a series folder per volume, a file per radiograph */
        snprintf(rel, sizeof rel, "%s/%s_%06zu%s", split, vol ? "vol" : "img", it->file_no,
                 vol ? "" : ".dcm");
    else
        snprintf(rel, sizeof rel, "%s/%s_%06zu.%s", split, vol ? "vol" : "img", it->file_no,
                 vol ? "nii.gz" : "png");
    if ((size_t)snprintf(path, sizeof path, "%s/%s", J->dir, rel) >= sizeof path) {
        synth_study_free(&s);
        return util_errf(eb, el, SYNTH_INVAL, "%s: path too long", J->dir);
    }
    synth_dicom_ids ids = {o->seed, it->patient, it->study};
    rc = dcm   ? synth_write_dicom(&s, path, &ids, eb, el)
         : vol ? synth_write_nifti(&s, path, eb, el)
               : synth_write_png(&s, path, eb, el);
    if (rc) {
        synth_study_free(&s);
        return rc;
    }
    struct stat sb;
    it->bytes = stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;
    if (dcm && vol) /* the slices' pixel data */
        it->bytes = (uint64_t)s.nx * s.ny * s.nz * 2;
    if (dcm) {
        /* AccessionNumber,report with the report quoted (RFC 4180) */
        size_t rl = strlen(s.report), k = 0;
        char *row = malloc(2 * rl + 32);
        if (!row) {
            synth_study_free(&s);
            return util_errf(eb, el, SYNTH_NOMEM, "%s: out of memory", path);
        }
        k = (size_t)sprintf(row, "S%07zu,\"", it->study);
        for (size_t i = 0; i < rl; i++) {
            if (s.report[i] == '"')
                row[k++] = '"';
            row[k++] = s.report[i];
        }
        row[k++] = '"';
        row[k++] = '\n';
        row[k] = '\0';
        it->csv = row;
    }

    size_t cap = strlen(s.report) * 2 + 2048;
    char *line = malloc(cap);
    if (!line) {
        synth_study_free(&s);
        return util_errf(eb, el, SYNTH_NOMEM, "%s: out of memory", path);
    }
    sbuf b;
    sb_init(&b, line, cap);
    sb_puts(&b, "{\"file\":");
    sb_json_string(&b, rel);
    sb_printf(&b, ",\"kind\":\"%s\",\"modality\":\"%s\",\"report\":", vol ? "volume" : "image",
              vol ? "CT" : dcm ? "DX" : "CR");
    sb_json_string(&b, s.report);
    sb_printf(&b, ",\"split\":\"%s\",\"labels\":", split);
    labels_json_sb(&b, &s.findings);
    sb_printf(&b, ",\"patient\":\"P%06zu\",\"study\":\"S%07zu\"", it->patient, it->study);
    if (it->rescan_of >= 0)
        sb_printf(&b, ",\"rescan_of\":\"S%07lld\"", it->rescan_of);
    if (it->pair >= 0)
        sb_printf(&b, ",\"pair\":\"S%07lld\"", it->pair);
    sb_puts(&b, "}\n");
    synth_study_free(&s);
    assert(!b.over);
    it->line = line;
    return SYNTH_OK;
}

static void *worker(void *arg)
{
    job *J = arg;
    char err[1024];
    for (;;) {
        pthread_mutex_lock(&J->mu);
        if (J->err || J->next >= J->n) {
            pthread_mutex_unlock(&J->mu);
            break;
        }
        size_t i = J->next++;
        pthread_mutex_unlock(&J->mu);
        err[0] = 0;
        int rc = make_item(J, &J->items[i], err, sizeof err);
        pthread_mutex_lock(&J->mu);
        if (rc && !J->err) {
            J->err = rc;
            snprintf(J->msg, sizeof J->msg, "%s", err);
        }
        J->done++;
        if (!rc && J->o->progress)
            J->o->progress(J->o->ctx, J->done, J->n);
        pthread_mutex_unlock(&J->mu);
    }
    return NULL;
}

static int ensure_dir(const char *path, char *eb, size_t el)
{
    int e = util_mkdir_p(path);
    if (e == ENOTDIR)
        return util_errf(eb, el, SYNTH_IO, "%s: it or a folder above it exists and is not a directory",
                         path);
    if (e)
        return util_errf(eb, el, SYNTH_IO, "%s: cannot create directory: %s", path, strerror(e));
    return SYNTH_OK;
}

static int write_text(const char *path, const char *text, char *eb, size_t el)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return util_errf(eb, el, SYNTH_IO, "%s: cannot create: %s", path, strerror(errno));
    size_t n = strlen(text);
    int ok = fwrite(text, 1, n, fp) == n;
    int e = errno;
    if (fclose(fp) != 0 && ok) {
        ok = 0;
        e = errno;
    }
    if (!ok) {
        remove(path);
        return util_errf(eb, el, SYNTH_IO, "%s: write failed: %s", path, strerror(e));
    }
    return SYNTH_OK;
}

int synth_dataset_write(const char *dir, const synth_opts *o, synth_stats *st,
                            char *eb, size_t el)
{
    if (!dir || !*dir || !o)
        return util_errf(eb, el, SYNTH_INVAL, "synth: no output directory");
    const char *split = synth_split_name(o->split);
    if (!split)
        return util_errf(eb, el, SYNTH_INVAL, "synth: split = %d, expected train, val or test", o->split);
    if (o->size != SYNTH_SIZE_DEFAULT && o->size != SYNTH_SIZE_SMALL)
        return util_errf(eb, el, SYNTH_INVAL, "synth: size = %d, expected default or small", o->size);
    const size_t V = o->volumes, I = o->images, R = o->rescans;
    const size_t prange = PATIENT_RANGE[o->split];
    if (V > prange || I > prange - V)
        return util_errf(eb, el, SYNTH_INVAL,
                    "synth: volumes + images = %zu + %zu, at most %zu in the %s split", V, I,
                    prange, split);
    if (R > 0 && V + I == 0)
        return util_errf(eb, el, SYNTH_INVAL, "synth: rescans = %zu need volumes or images to rescan", R);
    if (R > 10 * prange - V - I)
        return util_errf(eb, el, SYNTH_INVAL, "synth: rescans = %zu, at most %zu in the %s split", R,
                    10 * prange - V - I, split);

    char path[4096], tmp[4096];
    if (snprintf(path, sizeof path, "%s/%s.jsonl.tmp", dir, split) >= (int)sizeof path)
        return util_errf(eb, el, SYNTH_INVAL, "%s: path too long", dir);
    int rc = ensure_dir(dir, eb, el);
    if (rc)
        return rc;
    snprintf(path, sizeof path, "%s/%s", dir, split);
    if ((rc = ensure_dir(path, eb, el)))
        return rc;
    {
        char vocab[8192];
        rc = synth_vocab_json(vocab, sizeof vocab);
        assert(rc == SYNTH_OK);
        snprintf(path, sizeof path, "%s/labels.json", dir);
        if ((rc = write_text(path, vocab, eb, el)))
            return rc;
    }

    /* a manifest of an earlier run would point at files being replaced */
    snprintf(path, sizeof path, "%s/%s.jsonl", dir, split);
    if (remove(path) != 0 && errno != ENOENT)
        return util_errf(eb, el, SYNTH_IO, "%s: cannot remove: %s", path, strerror(errno));

    /* the plan: volumes, then radiographs (the first ones project the
     * phantoms of the first volumes), then rescans of random earlier items */
    const size_t n = V + I + R;
    item *items = calloc(n ? n : 1, sizeof *items);
    if (!items)
        return util_errf(eb, el, SYNTH_NOMEM, "synth: out of memory for %zu items", n);
    const size_t pb = PATIENT_BASE[o->split], sbase = 10 * pb;
    const size_t npair = V < (I + 1) / 2 ? V : (I + 1) / 2;
    for (size_t v = 0; v < V; v++)
        items[v] = (item){SYNTH_VOLUME, v, pb + v, sbase + v, -1, -1, NULL, NULL, 0};
    for (size_t j = 0; j < I; j++) {
        item *it = &items[V + j];
        *it = (item){SYNTH_IMAGE, j, pb + V + j, sbase + V + j, -1, -1, NULL, NULL, 0};
        if (j < npair) {
            it->patient = pb + j;
            it->pair = (long long)(sbase + j);
        }
    }
    synth_rng rr;
    synth_rng_seed(&rr, mix(mix(o->seed, 0x52455343), (uint64_t)o->split)); /* "RESC" */
    size_t nrv = 0, nri = 0;
    for (size_t q = 0; q < R; q++) {
        const item *src = &items[synth_rng_below(&rr, (uint32_t)(V + I))];
        item *it = &items[V + I + q];
        *it = (item){src->kind, 0, src->patient, sbase + V + I + q, -1, (long long)src->study,
                     NULL, NULL, 0};
        it->file_no = src->kind == SYNTH_VOLUME ? V + nrv++ : I + nri++;
    }

    job J;
    memset(&J, 0, sizeof J);
    J.dir = dir;
    J.o = o;
    J.items = items;
    J.n = n;
    pthread_mutex_init(&J.mu, NULL);
    int nt = o->threads;
    if (nt <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        nt = c > 0 ? (int)c : 1;
    }
    if (nt > 64)
        nt = 64;
    if ((size_t)nt > n)
        nt = n ? (int)n : 1;
    pthread_t th[64];
    int started = 0;
    for (int t = 1; t < nt; t++)
        if (pthread_create(&th[started], NULL, worker, &J) == 0)
            started++;
    worker(&J);
    for (int t = 0; t < started; t++)
        pthread_join(th[t], NULL);
    pthread_mutex_destroy(&J.mu);

    rc = J.err;
    if (rc)
        util_errf(eb, el, rc, "%s", J.msg);
    if (!rc) {
        snprintf(tmp, sizeof tmp, "%s/%s.jsonl.tmp", dir, split);
        snprintf(path, sizeof path, "%s/%s.jsonl", dir, split);
        FILE *fp = fopen(tmp, "wb");
        if (!fp) {
            rc = util_errf(eb, el, SYNTH_IO, "%s: cannot create: %s", tmp, strerror(errno));
        } else {
            int ok = 1;
            for (size_t i = 0; i < n && ok; i++)
                ok = fputs(items[i].line, fp) >= 0;
            int e = errno;
            if (fclose(fp) != 0 && ok) {
                ok = 0;
                e = errno;
            }
            if (!ok) {
                remove(tmp);
                rc = util_errf(eb, el, SYNTH_IO, "%s: write failed: %s", tmp, strerror(e));
            } else if (rename(tmp, path) != 0) {
                e = errno;
                remove(tmp);
                rc = util_errf(eb, el, SYNTH_IO, "%s: cannot rename to %s: %s", tmp, path, strerror(e));
            }
        }
    }
    if (!rc && o->format == SYNTH_FORMAT_DICOM) {
        /* the reports, keyed by AccessionNumber, for medsem scan --reports */
        snprintf(tmp, sizeof tmp, "%s/%s.reports.csv.tmp", dir, split);
        snprintf(path, sizeof path, "%s/%s.reports.csv", dir, split);
        FILE *fp = fopen(tmp, "wb");
        int ok = fp && fputs("AccessionNumber,report\n", fp) >= 0;
        for (size_t i = 0; i < n && ok; i++)
            ok = fputs(items[i].csv, fp) >= 0;
        if (fp && fclose(fp) != 0)
            ok = 0;
        if (!ok || rename(tmp, path) != 0) {
            int e = errno;
            remove(tmp);
            rc = util_errf(eb, el, SYNTH_IO, "%s: write failed: %s", path, strerror(e));
        }
    }
    if (!rc && st) {
        memset(st, 0, sizeof *st);
        st->volumes = V;
        st->images = I;
        st->rescans = R;
        st->pairs = npair;
        for (size_t i = 0; i < n; i++)
            st->bytes += items[i].bytes;
    }
    for (size_t i = 0; i < n; i++) {
        free(items[i].line);
        free(items[i].csv);
    }
    free(items);
    return rc;
}
