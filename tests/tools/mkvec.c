/* mkvec.c - writes synthetic embeddings and metadata for tests and benchmarks.
 *
 *   mkvec --out PREFIX --n N --dim D [--clusters C] [--seed S]
 *         [--dtype f32|f16|f64] [--queries Q]
 *
 * PREFIX.npy     N x D, every row of unit L2 norm.  Without --clusters the
 *                rows are uniform on the sphere (normalised Gaussians); with
 *                --clusters C they lie around C random unit centres (noise
 *                of norm about MKVEC_NOISE), so IVF-style indexes have
 *                structure to find.  --dtype f64 writes '<f8' on purpose:
 *                the importer must reject it.
 * PREFIX.jsonl   one JSON object per row (see write_meta).
 * PREFIX.q.npy   with --queries Q: Q float32 queries, near random centres
 *                for clustered data, uniform otherwise.
 *
 * Deterministic: the same arguments give the same bytes on every platform
 * (splitmix64 + Box-Muller from tests/testutil.h).  Centres, data and
 * queries come from separate streams, so the queries for a given seed and
 * --clusters do not change with N.  Rows are streamed to buffered files, so
 * N = 1,000,000 x 512 needs a few kilobytes of memory besides the centres.
 * Each .npy is written to PATH.tmp and renamed when complete.
 *
 * Exit status: 0 on success, 1 on an I/O error, 2 on bad usage.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/testutil.h"

/* Norm of the noise added to a centre, relative to the unit centre: points
 * end up at cosine ~0.9 from their centre, clearly clustered but not
 * duplicates. */
#define MKVEC_NOISE 0.5
#define MKVEC_BUFSIZE (1 << 20)

enum { STREAM_CENTRES = 1, STREAM_DATA, STREAM_QUERIES };

typedef enum { DT_F32, DT_F16, DT_F64 } dtype;

static const struct {
    const char *name, *descr;
    size_t size;
} k_dtypes[] = {
    [DT_F32] = {"f32", "<f4", 4},
    [DT_F16] = {"f16", "<f2", 2},
    [DT_F64] = {"f64", "<f8", 8},
};

static void usage(FILE *f)
{
    fputs("usage: mkvec --out PREFIX --n N --dim D [--clusters C] [--seed S]\n"
          "             [--dtype f32|f16|f64] [--queries Q]\n"
          "writes PREFIX.npy (N x D, rows L2-normalised), PREFIX.jsonl (one object per row)\n"
          "and, with --queries, PREFIX.q.npy (Q x D float32).  Defaults: no clusters\n"
          "(uniform on the sphere), seed 1, dtype f32.\n",
          f);
}

static void die_usage(const char *fmt, const char *arg)
{
    fputs("mkvec: ", stderr);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    usage(stderr);
    exit(2);
}

/* Strict unsigned decimal: digits only, no sign, no overflow. */
static uint64_t parse_u64(const char *opt, const char *s)
{
    if (*s < '0' || *s > '9')
        die_usage("%s needs a non-negative integer", opt);
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0')
        die_usage("%s needs a non-negative integer", opt);
    return (uint64_t)v;
}

static void rng_stream(tu_rng *r, uint64_t seed, uint64_t stream)
{
    tu_rng_seed(r, seed * 0x9e3779b97f4a7c15ULL + stream * 0xbf58476d1ce4e5b9ULL);
    (void)tu_rng_u64(r);
}

/* A uniform point on the unit sphere (a normalised Gaussian vector). */
static void random_unit(tu_rng *r, float *v, size_t d)
{
    double ss;
    do {
        tu_fill_normal(r, v, d);
        ss = 0;
        for (size_t j = 0; j < d; j++)
            ss += (double)v[j] * v[j];
    } while (ss == 0);
    tu_normalize_rows(v, 1, d);
}

/* A unit vector near centre c: c + Gaussian noise of expected norm
 * MKVEC_NOISE, normalised. */
static void near_centre(tu_rng *r, const float *c, float *v, size_t d)
{
    double sigma = MKVEC_NOISE / sqrt((double)d);
    double ss;
    do {
        ss = 0;
        for (size_t j = 0; j < d; j++) {
            v[j] = (float)(c[j] + sigma * tu_rng_normal(r));
            ss += (double)v[j] * v[j];
        }
    } while (ss == 0);
    tu_normalize_rows(v, 1, d);
}

/* float32 -> IEEE binary16, round to nearest even; overflow gives inf,
 * NaN stays NaN (quiet), tiny values become subnormals or zero. */
static uint16_t float_to_half(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t man = x & 0x7fffffu;
    if (exp == 0xff)
        return (uint16_t)(sign | 0x7c00u | (man ? 0x200u | (man >> 13) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10)
            return sign; /* below half the smallest subnormal */
        man |= 0x800000u;
        unsigned shift = (unsigned)(14 - e); /* 14..24 */
        uint32_t h = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t halfway = 1u << (shift - 1);
        if (rem > halfway || (rem == halfway && (h & 1)))
            h++; /* may carry into the smallest normal: still right */
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)e << 10) | (man >> 13);
    uint32_t rem = man & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++; /* may carry into the exponent, up to inf: still right */
    return (uint16_t)(sign | h);
}

/* ---- streamed .npy output ------------------------------------------------------ */

typedef struct npy_out {
    FILE *f;
    char *path, *tmp;
    dtype dt;
    size_t cols;
    unsigned char *row; /* cols * itemsize bytes, little-endian */
} npy_out;

static void io_fail(const char *path, const char *what)
{
    fprintf(stderr, "mkvec: %s: %s: %s\n", path, what, strerror(errno));
    exit(1);
}

static char *concat(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    char *p = malloc(na + nb + 1);
    if (p == NULL) {
        fputs("mkvec: out of memory\n", stderr);
        exit(1);
    }
    memcpy(p, a, na);
    memcpy(p + na, b, nb + 1);
    return p;
}

/* The same layout numpy and idx_npy_write produce: format 1.0, header
 * padded with spaces so the data start on a 64-byte boundary, ending in
 * '\n'. */
static void npy_begin(npy_out *o, const char *path, dtype dt, uint64_t rows, size_t cols)
{
    o->path = concat(path, "");
    o->tmp = concat(path, ".tmp");
    o->dt = dt;
    o->cols = cols;
    o->row = malloc(cols * k_dtypes[dt].size);
    if (o->row == NULL) {
        fputs("mkvec: out of memory\n", stderr);
        exit(1);
    }
    o->f = fopen(o->tmp, "wb");
    if (o->f == NULL)
        io_fail(o->tmp, "open");
    setvbuf(o->f, NULL, _IOFBF, MKVEC_BUFSIZE);

    char dict[160];
    int n = snprintf(dict, sizeof dict,
                     "{'descr': '%s', 'fortran_order': False, 'shape': (%llu, %zu), }",
                     k_dtypes[dt].descr, (unsigned long long)rows, cols);
    size_t total = (10 + (size_t)n + 1 + 63) / 64 * 64;
    size_t hlen = total - 10;
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hlen & 0xff),
                             (unsigned char)(hlen >> 8)};
    if (fwrite(pre, 1, sizeof pre, o->f) != sizeof pre ||
        fwrite(dict, 1, (size_t)n, o->f) != (size_t)n)
        io_fail(o->tmp, "write");
    for (size_t i = 10 + (size_t)n; i + 1 < total; i++)
        if (putc(' ', o->f) == EOF)
            io_fail(o->tmp, "write");
    if (putc('\n', o->f) == EOF)
        io_fail(o->tmp, "write");
}

static void put_le(unsigned char *p, uint64_t u, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(u >> (8 * i));
}

static void npy_row(npy_out *o, const float *v)
{
    size_t sz = k_dtypes[o->dt].size;
    for (size_t j = 0; j < o->cols; j++) {
        unsigned char *p = o->row + j * sz;
        if (o->dt == DT_F32) {
            uint32_t u;
            memcpy(&u, &v[j], 4);
            put_le(p, u, 4);
        } else if (o->dt == DT_F16) {
            put_le(p, float_to_half(v[j]), 2);
        } else {
            double d = v[j];
            uint64_t u;
            memcpy(&u, &d, 8);
            put_le(p, u, 8);
        }
    }
    if (fwrite(o->row, sz, o->cols, o->f) != o->cols)
        io_fail(o->tmp, "write");
}

static void npy_end(npy_out *o)
{
    if (fflush(o->f) != 0)
        io_fail(o->tmp, "write");
    if (fclose(o->f) != 0)
        io_fail(o->tmp, "close");
    if (rename(o->tmp, o->path) != 0)
        io_fail(o->path, "rename");
    free(o->row);
    free(o->tmp);
    free(o->path);
}

/* ---- metadata -------------------------------------------------------------------- */

/* Shortest %g form that reads back as the same double: 0.1, not
 * 0.10000000000000001. */
static void fmt_double(char *buf, size_t cap, double x)
{
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, x);
        if (strtod(buf, NULL) == x)
            return;
    }
}

static void write_meta(FILE *f, const char *path, uint64_t i, uint64_t n)
{
    static const char *const modality[3] = {"CT", "MR", "CR"};
    char score[32];
    fmt_double(score, sizeof score, (double)i / (double)n);
    if (fprintf(f,
                "{\"name\":\"item-%llu\",\"group\":\"g%u\",\"score\":%s,\"modality\":\"%s\","
                "\"tags\":[\"t%u\",\"t%u\"]}\n",
                (unsigned long long)i, (unsigned)(i % 10), score, modality[i % 3],
                (unsigned)(i % 4), (unsigned)((i + 1) % 4)) < 0)
        io_fail(path, "write");
}

/* ---- main ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"out", required_argument, NULL, 'o'},      {"n", required_argument, NULL, 'n'},
        {"dim", required_argument, NULL, 'd'},      {"clusters", required_argument, NULL, 'c'},
        {"seed", required_argument, NULL, 's'},     {"dtype", required_argument, NULL, 't'},
        {"queries", required_argument, NULL, 'q'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *prefix = NULL;
    uint64_t n = 0, dim = 0, clusters = 0, seed = 1, queries = 0;
    int have_n = 0;
    dtype dt = DT_F32;

    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'o':
            if (*optarg == '\0')
                die_usage("--out needs a non-empty prefix%s", "");
            prefix = optarg;
            break;
        case 'n':
            n = parse_u64("--n", optarg);
            have_n = 1;
            break;
        case 'd':
            dim = parse_u64("--dim", optarg);
            if (dim == 0)
                die_usage("--dim must be at least 1%s", "");
            break;
        case 'c':
            clusters = parse_u64("--clusters", optarg);
            if (clusters == 0)
                die_usage("--clusters must be at least 1%s", "");
            break;
        case 's':
            seed = parse_u64("--seed", optarg);
            break;
        case 'q':
            queries = parse_u64("--queries", optarg);
            break;
        case 't': {
            size_t k;
            for (k = 0; k < sizeof k_dtypes / sizeof k_dtypes[0]; k++)
                if (strcmp(optarg, k_dtypes[k].name) == 0)
                    break;
            if (k == sizeof k_dtypes / sizeof k_dtypes[0])
                die_usage("--dtype must be f32, f16 or f64, not '%s'", optarg);
            dt = (dtype)k;
            break;
        }
        case 'h':
            usage(stdout);
            return 0;
        default:
            die_usage("unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        die_usage("unexpected argument '%s'", argv[optind]);
    if (prefix == NULL)
        die_usage("--out is required%s", "");
    if (!have_n)
        die_usage("--n is required%s", "");
    if (dim == 0)
        die_usage("--dim is required%s", "");
    /* Everything below indexes with size_t; the .npy data must be
     * addressable by a reader too. */
    if (dim > SIZE_MAX / 8 || n > SIZE_MAX / 8 / dim || queries > SIZE_MAX / 8 / dim ||
        (clusters != 0 && clusters > SIZE_MAX / sizeof(float) / dim))
        die_usage("sizes too large%s", "");
    size_t d = (size_t)dim;

    float *centres = NULL;
    if (clusters > 0) {
        centres = malloc((size_t)clusters * d * sizeof *centres);
        if (centres == NULL) {
            fputs("mkvec: out of memory for the cluster centres\n", stderr);
            return 1;
        }
        tu_rng rc;
        rng_stream(&rc, seed, STREAM_CENTRES);
        for (uint64_t c = 0; c < clusters; c++)
            random_unit(&rc, centres + c * d, d);
    }
    float *v = malloc(d * sizeof *v);
    if (v == NULL) {
        fputs("mkvec: out of memory\n", stderr);
        return 1;
    }

    /* Data and metadata in one pass. */
    char *npy_path = concat(prefix, ".npy");
    char *meta_path = concat(prefix, ".jsonl");
    npy_out o;
    npy_begin(&o, npy_path, dt, n, d);
    FILE *meta = fopen(meta_path, "w");
    if (meta == NULL)
        io_fail(meta_path, "open");
    setvbuf(meta, NULL, _IOFBF, MKVEC_BUFSIZE);
    tu_rng r;
    rng_stream(&r, seed, STREAM_DATA);
    for (uint64_t i = 0; i < n; i++) {
        if (centres)
            near_centre(&r, centres + tu_rng_below(&r, clusters) * d, v, d);
        else
            random_unit(&r, v, d);
        npy_row(&o, v);
        write_meta(meta, meta_path, i, n);
    }
    npy_end(&o);
    if (fflush(meta) != 0 || ferror(meta))
        io_fail(meta_path, "write");
    if (fclose(meta) != 0)
        io_fail(meta_path, "close");

    if (queries > 0) {
        char *q_path = concat(prefix, ".q.npy");
        npy_begin(&o, q_path, DT_F32, queries, d);
        rng_stream(&r, seed, STREAM_QUERIES);
        for (uint64_t i = 0; i < queries; i++) {
            if (centres)
                near_centre(&r, centres + tu_rng_below(&r, clusters) * d, v, d);
            else
                random_unit(&r, v, d);
            npy_row(&o, v);
        }
        npy_end(&o);
        free(q_path);
    }

    free(npy_path);
    free(meta_path);
    free(v);
    free(centres);
    return 0;
}
