/* backend_cpu.c - the CPU backend: OpenBLAS for matrix products, plain loops
 * for everything else.
 *
 * The loops are written for gcc's auto-vectoriser at -O2 (restrict pointers,
 * unit-stride inner loops, nothing but inline code inside them) and marked
 * "omp simd": gcc 12's -O2 cost model skips loops of unknown trip count, and
 * float reductions need the licence to reorder.  exp and erf are our own
 * branch-free approximations (below) because libm's stay scalar without
 * -ffast-math, and softmax and GELU spend most of their time there.
 *
 * Threads: all parallelism is ours (one OpenMP team of nthreads), and
 * OpenBLAS runs single-threaded inside it - matmul hands each thread a block
 * of output columns (or rows), attention a block of (batch, head, query
 * rows).  Letting OpenBLAS thread its own products instead puts two pools of
 * spinning workers on the same cores; measured on 2 cores, that ran ViT-B at
 * a quarter of the speed.
 *
 * Each kernel is a free function named cpu_<op> with its shapes in a
 * comment; the tables at the bottom point at them.  The backward twins
 * (enc_backend_train_i) follow the forward kernels, in the same order.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "encoder/backend.h"
#include "encoder/encoder.h"

/* ENC__OMP(x) is "#pragma omp x"; ENC__PARALLEL_FOR(nt, sched) opens a loop
 * split over nt threads (without OpenMP it still evaluates nt, so builds
 * without -fopenmp see no unused variables). */
#ifdef _OPENMP
#define ENC__STR(...) #__VA_ARGS__
#define ENC__OMP(...) _Pragma(ENC__STR(omp __VA_ARGS__))
#define ENC__PARALLEL_FOR(nt, ...)                                                          \
    ENC__OMP(parallel for num_threads(nt) schedule(__VA_ARGS__))
#else
#define ENC__OMP(...)
#define ENC__PARALLEL_FOR(nt, ...) (void)(nt);
#endif

/* Below this many floats of work a loop runs on one thread: waking the team
 * costs more than it saves. */
#define PAR_MIN 32768

/* Query rows per attention task: scores of one task are ATT_ROWS x T. */
#define ATT_ROWS 128

/* The two element-wise loops that matter (softmax took a fifth of a
 * 2049-token ViT's time at SSE2 width; GELU) are compiled for AVX-512 and
 * AVX2 as well as the baseline, and the loader picks one for the CPU (GCC
 * function multiversioning; ifunc needs glibc).  Results agree to rounding. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define ENC__CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ENC__CLONES
#endif

static inline int nth(const enc_backend *be, size_t work)
{
    return work >= PAR_MIN ? be->nthreads : 1;
}

static inline int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ---- geometry ------------------------------------------------------------- */

size_t enc_patch_count(const enc_patch_geom *g)
{
    size_t n = 1;
    for (int i = 0; i < 3; i++)
        n *= (size_t)(g->size[i] / g->patch[i]);
    return n;
}

size_t enc_patch_dim(const enc_patch_geom *g)
{
    return (size_t)g->channels * g->patch[0] * g->patch[1] * g->patch[2];
}

void enc_conv_out(const enc_conv_geom *g, int out[3])
{
    for (int a = 0; a < 3; a++)
        out[a] = (g->size[a] + 2 * g->pad[a] - g->kernel[a]) / g->stride[a] + 1;
}

size_t enc_conv_count(const enc_conv_geom *g)
{
    int o[3];
    enc_conv_out(g, o);
    return (size_t)o[0] * o[1] * o[2];
}

size_t enc_conv_dim(const enc_conv_geom *g)
{
    return (size_t)g->cin * g->kernel[0] * g->kernel[1] * g->kernel[2];
}

/* ---- exp and erf -------------------------------------------------------------
 *
 * exp: x = n ln2 + r with n = round(x / ln2) and |r| <= ln2 / 2, ln2 split in
 * a high part exact in float and a low part (Cody and Waite) so r keeps its
 * bits; e^r from its Taylor series to r^7 (truncation error below 6e-9);
 * 2^n built in the exponent field.  About 2 ulp over the range; results
 * for x < -87 (below 2^-125) are 0.  The magic-number rounding and fsel
 * compile to vector adds and blends, so callers' loops vectorise. */

/* c ? a : b on the bits: gcc will not if-convert a float ?: while FP traps
 * are honoured (-ftrapping-math, the default), but it does vectorise this. */
static inline float fsel(int c, float a, float b)
{
    uint32_t ua, ub, m = 0u - (uint32_t)c;
    memcpy(&ua, &a, sizeof ua);
    memcpy(&ub, &b, sizeof ub);
    uint32_t r = (ua & m) | (ub & ~m);
    float f;
    memcpy(&f, &r, sizeof f);
    return f;
}

static inline float exp_fast(float x)
{
    float xc = fsel(x < -87.0f, -87.0f, x);
    xc = fsel(xc > 88.0f, 88.0f, xc);
    float t = xc * 1.44269504088896341f;
    float n = (t + 12582912.0f) - 12582912.0f; /* round to nearest: 1.5 * 2^23 */
    float r = xc - n * 0.693145751953125f;
    r = r - n * 1.42860682030941723e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t ni = (int32_t)n;
    uint32_t bits = (uint32_t)(ni + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    float y = p * scale;
    return fsel(x < -87.0f, 0.0f, y);
}

/* erf for x >= 0: Abramowitz and Stegun 7.1.26 (Hastings' rational form),
 * absolute error below 1.5e-7 in exact arithmetic; in float, 1 - p e^(-x^2)
 * cancels near 0 and the error reaches 6.3e-7 there.  GELU multiplies it by
 * x / 2: over every float in [-12, 12] the GELU below is within
 * 1.2e-7 * (1 + |x|) of the erf formula (exhaustive check; the test allows
 * 2e-7 * (1 + |x|)). */
static inline float erf_pos(float x)
{
    float t = 1.0f / (1.0f + 0.3275911f * x);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    p = p * t;
    return 1.0f - p * exp_fast(-x * x);
}

/* ---- memory ----------------------------------------------------------------- */

static void *cpu_alloc(enc_backend *be, size_t bytes)
{
    (void)be;
    void *p = NULL;
    size_t n = (bytes + 63) & ~(size_t)63;
    if (n < bytes || posix_memalign(&p, 64, n ? n : 64) != 0)
        return NULL;
    return p;
}

static void cpu_free(enc_backend *be, void *p)
{
    (void)be;
    free(p);
}

static int cpu_copy_bytes(enc_backend *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    if (bytes)
        memmove(dst, src, bytes);
    return ENC_OK;
}

static int cpu_sync(enc_backend *be)
{
    (void)be;
    return ENC_OK;
}

/* One block of scores [min(T, ATT_ROWS), T] per thread. */
static size_t cpu_attention_scratch(enc_backend *be, int B, int T, int H)
{
    (void)B;
    (void)H;
    size_t rows = T < ATT_ROWS ? (size_t)T : ATT_ROWS;
    return (size_t)be->nthreads * rows * (size_t)T;
}

/* The im2col matrix of one image, [N, K]. */
static size_t cpu_patch_scratch(enc_backend *be, const enc_patch_geom *g, int B)
{
    (void)be;
    (void)B;
    return enc_patch_count(g) * enc_patch_dim(g);
}

/* ---- kernels -------------------------------------------------------------------- */

/* dst [n] = src [n] */
static void cpu_copy(enc_backend *be, float *dst, const float *src, size_t n)
{
    (void)be;
    if (n && dst != src)
        memcpy(dst, src, n * sizeof(float));
}

/* One block of a product, on the calling thread: out [rows, nout] (row
 * stride ldo) (+)= in [rows, nin] * w [nout, nin]^T + bias [nout].  The bias
 * goes in first (written or added), then sgemm with beta 1 accumulates the
 * product on top: no second pass over out. */
static void matmul_block(float *out, int ldo, const float *in, const float *w, const float *bias,
                         int rows, int nin, int nout, int accumulate)
{
    float beta = accumulate ? 1.0f : 0.0f;
    if (bias != NULL) {
        for (int r = 0; r < rows; r++) {
            float *restrict o = out + (size_t)r * ldo;
            const float *restrict b = bias;
            if (accumulate) {
                ENC__OMP(simd)
                for (int j = 0; j < nout; j++)
                    o[j] += b[j];
            } else {
                memcpy(o, b, (size_t)nout * sizeof(float));
            }
        }
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nout, nin, 1.0f, in, nin, w, nin,
                beta, out, ldo);
}

/* out [rows, nout] (row stride ldo) (+)= in [rows, nin] * w [nout, nin]^T + bias [nout]
 * Split across the team along the longer side of out: by columns each
 * thread packs only its own rows of w (the larger operand in a transformer),
 * by rows each packs all of w.  Blocks of columns are multiples of 16. */
static void cpu_matmul(enc_backend *be, float *out, int ldo, const float *in, const float *w,
                       const float *bias, int rows, int nin, int nout, int accumulate)
{
    if (ldo == 0)
        ldo = nout;
    assert(rows >= 0 && nin > 0 && nout > 0 && ldo >= nout);
    if (rows == 0)
        return;
    int nt = be->nthreads;
    double work = (double)rows * nin * nout;
    if (nt == 1 || work < 1 << 18) {
        matmul_block(out, ldo, in, w, bias, rows, nin, nout, accumulate);
        return;
    }
    int by_cols = nout >= rows;
    int len = by_cols ? nout : rows;
    int step = (len + nt - 1) / nt;
    if (by_cols)
        step = (step + 15) / 16 * 16;
    int nblocks = (len + step - 1) / step;
    ENC__PARALLEL_FOR(nt, static, 1)
    for (int i = 0; i < nblocks; i++) {
        int lo = i * step, n = len - lo < step ? len - lo : step;
        if (by_cols)
            matmul_block(out + lo, ldo, in, w + (size_t)lo * nin, bias ? bias + lo : NULL, rows,
                         nin, n, accumulate);
        else
            matmul_block(out + (size_t)lo * ldo, ldo, in + (size_t)lo * nin, w, bias, n, nin,
                         nout, accumulate);
    }
}

/* out [rows, dim] = (in - mean) * rstd * w + b; two passes over each row
 * (mean, then centred variance) accumulated in double: rows whose mean is
 * large against their spread keep their digits, and LayerNorm is a small
 * share of the time. */
static void cpu_layernorm(enc_backend *be, float *out, const float *in, const float *w,
                          const float *b, int rows, int dim, float eps)
{
    size_t work = (size_t)rows * (size_t)dim;
    ENC__PARALLEL_FOR(nth(be, work), static)
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * dim;
        float *o = out + (size_t)r * dim;
        double s = 0.0;
        ENC__OMP(simd reduction(+ : s))
        for (int j = 0; j < dim; j++)
            s += x[j];
        double mean = s / dim;
        double v = 0.0;
        ENC__OMP(simd reduction(+ : v))
        for (int j = 0; j < dim; j++) {
            double d = (double)x[j] - mean;
            v += d * d;
        }
        float rstd = (float)(1.0 / sqrt(v / dim + eps));
        /* x and o may be the same row: each element is read before its
         * own write, and only then. */
        ENC__OMP(simd)
        for (int j = 0; j < dim; j++)
            o[j] = (float)((double)x[j] - mean) * rstd * w[j] + b[j];
    }
}

/* out [n] = gelu(in [n]), exact (erf) form. */
ENC__CLONES static void gelu_span(float *out, const float *in, size_t n)
{
    ENC__OMP(simd)
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float e = erf_pos(fabsf(x) * 0.70710678118654752f);
        e = copysignf(e, x);
        out[i] = 0.5f * x * (1.0f + e);
    }
}

/* An elementwise op on spans: out [n] from a [n] and b [n] (b may be unused). */
typedef void (*span_fn)(float *out, const float *a, const float *b, size_t n);

/* span over [0, n) in chunks of 4096, the chunks spread over the threads */
static void chunked(enc_backend *be, span_fn span, float *out, const float *a, const float *b,
                    size_t n)
{
    const size_t chunk = 4096;
    size_t nchunks = (n + chunk - 1) / chunk;
    ENC__PARALLEL_FOR(nth(be, n), static)
    for (size_t c = 0; c < nchunks; c++) {
        size_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        span(out + lo, a + lo, b ? b + lo : NULL, hi - lo);
    }
}

static void gelu_span_ab(float *out, const float *in, const float *unused, size_t n)
{
    (void)unused;
    gelu_span(out, in, n);
}

static void cpu_gelu(enc_backend *be, float *out, const float *in, size_t n)
{
    chunked(be, gelu_span_ab, out, in, NULL, n);
}

/* out [rows, cols] = a [rows, cols] + b [rows % brows, cols] */
static void cpu_add(enc_backend *be, float *out, const float *a, const float *b, size_t rows,
                    int cols, size_t brows)
{
    assert(brows > 0);
    size_t work = rows * (size_t)cols;
    ENC__PARALLEL_FOR(nth(be, work), static)
    for (size_t r = 0; r < rows; r++) {
        float *o = out + r * cols;
        const float *x = a + r * cols;
        const float *restrict y = b + (r % brows) * cols;
        ENC__OMP(simd)
        for (int j = 0; j < cols; j++)
            o[j] = x[j] + y[j];
    }
}

/* One row in place: x [n] = softmax(x).  All -inf gives all 0. */
ENC__CLONES static void softmax_row(float *restrict x, int n)
{
    float m = -INFINITY;
    /* gcc vectorises this max; clang refuses a float max without fast-math
     * and -Werror turns its "not vectorized" note into a failure */
#if !defined(__clang__)
    ENC__OMP(simd reduction(max : m))
#endif
    for (int j = 0; j < n; j++)
        m = x[j] > m ? x[j] : m;
    if (m == -INFINITY) {
        for (int j = 0; j < n; j++)
            x[j] = 0.0f;
        return;
    }
    float s = 0.0f;
    ENC__OMP(simd reduction(+ : s))
    for (int j = 0; j < n; j++) {
        float e = exp_fast(x[j] - m);
        x[j] = e;
        s += e;
    }
    float inv = 1.0f / s;
    ENC__OMP(simd)
    for (int j = 0; j < n; j++)
        x[j] *= inv;
}

/* out [rows, cols] = softmax(in [rows, cols]) per row */
static void cpu_softmax(enc_backend *be, float *out, const float *in, int rows, int cols)
{
    size_t work = (size_t)rows * (size_t)cols;
    ENC__PARALLEL_FOR(nth(be, work), static)
    for (int r = 0; r < rows; r++) {
        float *o = out + (size_t)r * cols;
        if (o != in + (size_t)r * cols)
            memcpy(o, in + (size_t)r * cols, (size_t)cols * sizeof(float));
        softmax_row(o, cols);
    }
}

/* Keys per block of the tiled attention, and the sequence length from which
 * it may be used.  It is off unless be->tiled_attention: on the 2-core
 * development machine bench/attention measured it 1.08x slower than the
 * query-blocked attention at COLIPRI's 13,824 tokens (and 1.17x with 512
 * keys per block), which already keeps its scores to ATT_ROWS x T floats
 * per thread (7 MB there), never T x T. */
#define ATT_KEYS 2048
#define ATT_TILED_MIN 2048

/* One task of the tiled attention: n <= ATT_ROWS query rows q against the
 * T keys k and values v (leading dimension ld), the keys ATT_KEYS at a time
 * with an online softmax (a running maximum and sum per row, the partial
 * output rescaled when the maximum grows), so the scores in flight are
 * ATT_ROWS x ATT_KEYS.  S is the thread's slice of scratch (ATT_ROWS x T
 * floats): the score block, the partial output and the two per-row numbers
 * (T >= ATT_KEYS + hd + 2).  Writes o [n, hd] with leading dimension ldo. */
static void attention_rows_tiled(float *S, const float *q, const float *k, const float *v,
                                 const float *mb, int n, int T, int hd, int ld, float scale,
                                 float *o, int ldo)
{
    float *acc = S + (size_t)ATT_ROWS * ATT_KEYS, *mx = acc + (size_t)ATT_ROWS * hd;
    float *sum = mx + ATT_ROWS;
    for (int i = 0; i < n; i++) {
        mx[i] = -INFINITY;
        sum[i] = 0.0f;
    }
    memset(acc, 0, (size_t)n * hd * sizeof *acc);
    for (int j0 = 0; j0 < T; j0 += ATT_KEYS) {
        int kn = T - j0 < ATT_KEYS ? T - j0 : ATT_KEYS;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, kn, hd, scale, q, ld,
                    k + (size_t)j0 * ld, ld, 0.0f, S, kn);
        for (int i = 0; i < n; i++) {
            float *restrict srow = S + (size_t)i * kn;
            if (mb != NULL) {
                ENC__OMP(simd)
                for (int j = 0; j < kn; j++)
                    srow[j] += (1.0f - mb[j0 + j]) * -FLT_MAX;
            }
            float m = mx[i];
            for (int j = 0; j < kn; j++)
                m = srow[j] > m ? srow[j] : m;
            if (m == -INFINITY) { /* every score so far -inf: nothing to add */
                memset(srow, 0, (size_t)kn * sizeof *srow);
                continue;
            }
            float corr = mx[i] == -INFINITY ? 0.0f : exp_fast(mx[i] - m), add = 0.0f;
            ENC__OMP(simd reduction(+ : add))
            for (int j = 0; j < kn; j++) {
                float e = exp_fast(srow[j] - m);
                srow[j] = e;
                add += e;
            }
            sum[i] = sum[i] * corr + add;
            mx[i] = m;
            if (corr != 1.0f) {
                float *restrict a = acc + (size_t)i * hd;
                ENC__OMP(simd)
                for (int c = 0; c < hd; c++)
                    a[c] *= corr;
            }
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, kn, 1.0f, S, kn,
                    v + (size_t)j0 * ld, ld, 1.0f, acc, hd);
    }
    for (int i = 0; i < n; i++) {
        float inv = sum[i] > 0 ? 1.0f / sum[i] : 0.0f;
        float *restrict oi = o + (size_t)i * ldo;
        const float *restrict a = acc + (size_t)i * hd;
        for (int c = 0; c < hd; c++)
            oi[c] = a[c] * inv;
    }
}

/* out [B, T, D] = softmax(q k^T / sqrt(hd) + maskbias) v, per batch and head,
 * qkv [B, T, 3D], mask [B, T] or NULL, probs [B, H, T, T] or NULL.
 *
 * Tasks are (batch, head, block of ATT_ROWS query rows), spread over the
 * team.  Each is two single-threaded sgemms straight out of the fused qkv
 * (leading dimension 3D, no copies) around the softmax of its rows; the
 * scores live in probs when the caller wants them and in the thread's slice
 * of scratch otherwise.  With be->tiled_attention, a long sequence without
 * probabilities takes its keys in blocks instead (attention_rows_tiled). */
static void cpu_attention(enc_backend *be, float *out, float *probs, const float *qkv,
                          const float *mask, float *scratch, int B, int T, int D, int H)
{
    assert(H > 0 && D % H == 0 && T > 0);
    const int hd = D / H;
    const int ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)hd);
    const size_t TT = (size_t)T * (size_t)T;
    const int rows = T < ATT_ROWS ? T : ATT_ROWS;
    const int nblk = (T + rows - 1) / rows;
    const int ntasks = B * H * nblk;
    const int tiled =
        be->tiled_attention && !probs && T >= ATT_TILED_MIN && T >= ATT_KEYS + hd + 2;
    double work = (double)B * H * TT * hd;
    ENC__PARALLEL_FOR(work >= (1 << 18) ? be->nthreads : 1, dynamic, 1)
    for (int task = 0; task < ntasks; task++) {
        int b = task / (H * nblk), h = task / nblk % H, i0 = task % nblk * rows;
        int n = T - i0 < rows ? T - i0 : rows;
        const float *base = qkv + (size_t)b * T * ld;
        const float *q = base + (size_t)i0 * ld + h * hd, *k = base + D + h * hd;
        const float *v = base + 2 * D + h * hd;
        const float *mb = mask ? mask + (size_t)b * T : NULL;
        float *o = out + ((size_t)b * T + i0) * D + h * hd;
        float *S = probs ? probs + ((size_t)b * H + h) * TT + (size_t)i0 * T
                         : scratch + (size_t)thread_id() * rows * T;
        if (tiled) {
            attention_rows_tiled(S, q, k, v, mb, n, T, hd, ld, scale, o, D);
            continue;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, T, hd, scale, q, ld, k, ld, 0.0f,
                    S, T);
        for (int i = 0; i < n; i++) {
            float *restrict s = S + (size_t)i * T;
            if (mb != NULL) {
                ENC__OMP(simd)
                for (int j = 0; j < T; j++)
                    s[j] += (1.0f - mb[j]) * -FLT_MAX;
            }
            softmax_row(s, T);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, T, 1.0f, S, T, v, ld, 0.0f,
                    o, D);
    }
}

/* The [N, K] im2col matrix of one image img [C, Z, Y, X]: row n is patch n
 * (z, y, x row-major over the grid), flattened in g->order. */
static void im2col(enc_backend *be, float *restrict col, const float *restrict img,
                   const enc_patch_geom *g)
{
    const int C = g->channels;
    const int Z = g->size[0], Y = g->size[1], X = g->size[2];
    const int pz = g->patch[0], py = g->patch[1], px = g->patch[2];
    const int gz = Z / pz, gy = Y / py, gx = X / px;
    const int N = gz * gy * gx;
    const size_t K = enc_patch_dim(g);
    const size_t plane = (size_t)Y * X, chan = (size_t)Z * plane;
    ENC__PARALLEL_FOR(nth(be, (size_t)N * K), static)
    for (int n = 0; n < N; n++) {
        int iz = n / (gy * gx), iy = (n / gx) % gy, ix = n % gx;
        float *row = col + (size_t)n * K;
        const float *src0 = img + (size_t)iz * pz * plane + (size_t)iy * py * X + (size_t)ix * px;
        if (g->order == ENC_PATCH_CONV) {
            for (int c = 0; c < C; c++)
                for (int z = 0; z < pz; z++)
                    for (int y = 0; y < py; y++) {
                        const float *s = src0 + c * chan + z * plane + (size_t)y * X;
                        float *d = row + (((size_t)c * pz + z) * py + y) * px;
                        memcpy(d, s, (size_t)px * sizeof(float));
                    }
        } else {
            for (int z = 0; z < pz; z++)
                for (int y = 0; y < py; y++)
                    for (int x = 0; x < px; x++) {
                        const float *s = src0 + z * plane + (size_t)y * X + x;
                        float *d = row + (((size_t)z * py + y) * px + x) * C;
                        for (int c = 0; c < C; c++)
                            d[c] = s[c * chan];
                    }
        }
    }
}

/* out[b] [N, D] (at out + b * out_bstride) = im2col(in[b]) [N, K] * w [D, K]^T + bias,
 * in [B, C, Z, Y, X] */
static void cpu_patch_embed(enc_backend *be, float *out, size_t out_bstride, const float *in,
                            const float *w, const float *bias, const enc_patch_geom *g, int B,
                            int D, float *scratch)
{
    const size_t N = enc_patch_count(g), K = enc_patch_dim(g);
    const size_t img = (size_t)g->channels * g->size[0] * g->size[1] * g->size[2];
    assert(out_bstride >= N * (size_t)D);
    for (int b = 0; b < B; b++) {
        im2col(be, scratch, in + (size_t)b * img, g);
        cpu_matmul(be, out + (size_t)b * out_bstride, D, scratch, w, bias, (int)N, (int)K, D, 0);
    }
}

/* x [B, 1 + N, D]: row 0 = cls [D]; rows += pos ([1 + N, D], or [N, D] for
 * rows 1..N when pos_has_cls is 0). */
static void cpu_vit_tokens(enc_backend *be, float *x, const float *cls, const float *pos,
                           int pos_has_cls, int B, int N, int D)
{
    const int T = N + 1;
    size_t work = (size_t)B * T * D;
    ENC__PARALLEL_FOR(nth(be, work), static)
    for (int r = 0; r < B * T; r++) {
        int t = r % T;
        float *restrict o = x + (size_t)r * D;
        if (t == 0)
            memcpy(o, cls, (size_t)D * sizeof(float));
        const float *restrict p = NULL;
        if (pos != NULL && pos_has_cls)
            p = pos + (size_t)t * D;
        else if (pos != NULL && t > 0)
            p = pos + (size_t)(t - 1) * D;
        if (p != NULL) {
            ENC__OMP(simd)
            for (int j = 0; j < D; j++)
                o[j] += p[j];
        }
    }
}

/* out [B, L, D] = table[ids] + pos [L, D] + type_row [D] */
static void cpu_embedding(enc_backend *be, float *out, const int32_t *ids, const float *table,
                          const float *pos, const float *type_row, int B, int L, int D)
{
    size_t work = (size_t)B * L * D;
    ENC__PARALLEL_FOR(nth(be, work), static)
    for (int r = 0; r < B * L; r++) {
        float *restrict o = out + (size_t)r * D;
        const float *restrict e = table + (size_t)ids[r] * D;
        memcpy(o, e, (size_t)D * sizeof(float));
        if (pos != NULL) {
            const float *restrict p = pos + (size_t)(r % L) * D;
            ENC__OMP(simd)
            for (int j = 0; j < D; j++)
                o[j] += p[j];
        }
        if (type_row != NULL)
            ENC__OMP(simd)
            for (int j = 0; j < D; j++)
                o[j] += type_row[j];
    }
}

/* out [B, D] = x [B, T, D] at t = 0 */
static void cpu_cls_pool(enc_backend *be, float *out, const float *x, int B, int T, int D)
{
    (void)be;
    for (int b = 0; b < B; b++)
        memmove(out + (size_t)b * D, x + (size_t)b * T * D, (size_t)D * sizeof(float));
}

/* out [rows, dim] = in / max(||in||, 1e-12) */
static void cpu_l2norm(enc_backend *be, float *out, const float *in, int rows, int dim)
{
    size_t work = (size_t)rows * (size_t)dim;
    ENC__PARALLEL_FOR(nth(be, work), static)
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * dim;
        float *o = out + (size_t)r * dim;
        float s = 0.0f;
        ENC__OMP(simd reduction(+ : s))
        for (int j = 0; j < dim; j++)
            s += x[j] * x[j];
        float nrm = sqrtf(s);
        float inv = 1.0f / (nrm > 1e-12f ? nrm : 1e-12f);
        ENC__OMP(simd)
        for (int j = 0; j < dim; j++)
            o[j] = x[j] * inv;
    }
}

/* ---- EVA / Primus (COLIPRI) --------------------------------------------------------- */

/* qkv [B, T, ld]: q and k columns of every head rotated by cs [T, hd] (cos
 * in the first hd / 2 columns, sin in the rest), interleaved pairs. */
static void cpu_rope(enc_backend *be, float *qkv, int ld, const float *cs, int B, int T, int D,
                     int H)
{
    assert(H > 0 && D % H == 0 && (D / H) % 2 == 0 && ld >= 2 * D);
    const int hd = D / H, np = hd / 2;
    size_t rows = (size_t)B * T;
    ENC__PARALLEL_FOR(nth(be, rows * 2 * D), static)
    for (size_t r = 0; r < rows; r++) {
        const float *c = cs + (r % (size_t)T) * hd, *sn = c + np;
        float *row = qkv + r * ld;
        for (int h = 0; h < 2 * H; h++) { /* q heads, then k heads */
            float *x = row + (size_t)h * hd;
            for (int p = 0; p < np; p++) {
                float a = x[2 * p], b = x[2 * p + 1];
                x[2 * p] = a * c[p] - b * sn[p];
                x[2 * p + 1] = b * c[p] + a * sn[p];
            }
        }
    }
}

/* out [n] = silu(gate) * x; sigmoid from e = e^-|g| (never overflows):
 * 1 / (1 + e) for g >= 0, e / (1 + e) below. */
ENC__CLONES static void swiglu_span(float *out, const float *gate, const float *x, size_t n)
{
    ENC__OMP(simd)
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        float e = exp_fast(-fabsf(g));
        float sig = fsel(g >= 0.0f, 1.0f, e) / (1.0f + e);
        out[i] = g * sig * x[i];
    }
}

static void cpu_swiglu(enc_backend *be, float *out, const float *gate, const float *x, size_t n)
{
    chunked(be, swiglu_span, out, gate, x, n);
}

/* x [rows, cols] += gamma [cols] * y [rows, cols] */
static void cpu_scale_add(enc_backend *be, float *x, const float *y, const float *gamma,
                          size_t rows, int cols)
{
    ENC__PARALLEL_FOR(nth(be, rows * (size_t)cols), static)
    for (size_t r = 0; r < rows; r++) {
        float *restrict o = x + r * cols;
        const float *restrict a = y + r * cols;
        ENC__OMP(simd)
        for (int j = 0; j < cols; j++)
            o[j] += gamma[j] * a[j];
    }
}

/* m, q, o [E] each, u and z [H, E], the scores [H, T]. */
static size_t cpu_attn_pool_scratch(enc_backend *be, int T, int E, int H)
{
    (void)be;
    return 3 * (size_t)E + 2 * (size_t)H * E + (size_t)H * T;
}

/* out [B, E] = AttentionPool1D(x [B, T, E], mask [B, T] or NULL), the
 * mean as query; the folded form of backend.h.  One batch row at a time,
 * the two [H, T] x [T, E] products (scores, weighted sums) single sgemms:
 * O(T E H) instead of the O(T E^2) of projecting every key and value. */
static void cpu_attn_pool(enc_backend *be, float *out, const float *x, const float *mask,
                          const float *w_in, const float *b_in, const float *w_out,
                          const float *b_out, int B, int T, int E, int H, float *scratch)
{
    assert(H > 0 && E % H == 0 && T > 0);
    const int hd = E / H;
    const float scale = 1.0f / sqrtf((float)hd);
    float *m = scratch, *q = m + E, *o = q + E, *u = o + E, *z = u + (size_t)H * E;
    float *S = z + (size_t)H * E;
    const float *wq = w_in, *wk = w_in + (size_t)E * E, *wv = w_in + 2 * (size_t)E * E;
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * T * E;
        const float *mb = mask ? mask + (size_t)b * T : NULL;
        /* the query: the mean of the kept rows, projected */
        double kept = 0;
        for (int e = 0; e < E; e++)
            m[e] = 0.0f;
        for (int j = 0; j < T; j++) {
            if (mb != NULL && !(mb[j] > 0.5f))
                continue;
            const float *xj = xb + (size_t)j * E;
            ENC__OMP(simd)
            for (int e = 0; e < E; e++)
                m[e] += xj[e];
            kept += 1;
        }
        float inv = kept > 0 ? (float)(1.0 / kept) : 0.0f;
        for (int e = 0; e < E; e++)
            m[e] *= inv;
        memcpy(q, b_in, (size_t)E * sizeof *q);
        cblas_sgemv(CblasRowMajor, CblasNoTrans, E, E, 1.0f, wq, E, m, 1, 1.0f, q, 1);
        /* u_h = Wk_h^T q_h / sqrt(hd): the keys' projection moved onto the query */
        for (int h = 0; h < H; h++)
            cblas_sgemv(CblasRowMajor, CblasTrans, hd, E, scale, wk + (size_t)h * hd * E, E,
                        q + (size_t)h * hd, 1, 0.0f, u + (size_t)h * E, 1);
        /* scores [H, T] = u x^T, masked rows -inf, softmax per head */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, H, T, E, 1.0f, u, E, xb, E, 0.0f,
                    S, T);
        for (int h = 0; h < H; h++) {
            float *s = S + (size_t)h * T;
            if (mb != NULL)
                for (int j = 0; j < T; j++)
                    if (!(mb[j] > 0.5f))
                        s[j] = -INFINITY;
            softmax_row(s, T);
        }
        /* z [H, E] = a x: each head's weighted mean of the rows */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, H, E, T, 1.0f, S, T, xb, E, 0.0f,
                    z, E);
        /* o_h = Wv_h z_h + bv_h, then the output projection */
        memcpy(o, b_in + 2 * (size_t)E, (size_t)E * sizeof *o);
        for (int h = 0; h < H; h++)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, hd, E, 1.0f, wv + (size_t)h * hd * E, E,
                        z + (size_t)h * E, 1, 1.0f, o + (size_t)h * hd, 1);
        float *ob = out + (size_t)b * E;
        if (b_out != NULL)
            memcpy(ob, b_out, (size_t)E * sizeof *ob);
        else
            memset(ob, 0, (size_t)E * sizeof *ob);
        cblas_sgemv(CblasRowMajor, CblasNoTrans, E, E, 1.0f, w_out, E, o, 1, 1.0f, ob, 1);
    }
}

/* ---- backward twins ---------------------------------------------------------------
 *
 * Same rules as the forward kernels: shapes above each, OpenMP bounded by
 * be->nthreads, sgemm single-threaded inside the team.  Sums over rows (the
 * gradients of weights, biases, tables) are split by columns and taken in
 * row order, in double inside a block of columns, so they come out the same
 * for any thread count. */

/* Column blocks of COLBLK for the reductions over rows: small enough for
 * double accumulators on the stack, wide enough to vectorise. */
#define COLBLK 64

/* Blocks of len split across nt threads, multiples of 16; returns the
 * count, *step the block length. */
static int split16(int len, int nt, int *step)
{
    int s = (len + nt - 1) / nt;
    s = (s + 15) / 16 * 16;
    *step = s;
    return (len + s - 1) / s;
}

/* x [n] = 0 */
static void cpu_zero(enc_backend *be, float *x, size_t n)
{
    (void)be;
    if (n)
        memset(x, 0, n * sizeof(float));
}

/* acc [cols] += sum over rows r of x[r * ld + j], j < cols, in row order
 * (cols <= COLBLK), accumulated in double. */
static void colsum_block(float *restrict acc, const float *x, size_t ld, int rows, int cols)
{
    double s[COLBLK] = {0};
    for (int r = 0; r < rows; r++) {
        const float *restrict xr = x + (size_t)r * ld;
        ENC__OMP(simd)
        for (int j = 0; j < cols; j++)
            s[j] += xr[j];
    }
    for (int j = 0; j < cols; j++)
        acc[j] += (float)s[j];
}

/* Twin of matmul:
 *   din [rows, nin] += dout [rows, nout] (row stride lddo) * w [nout, nin]
 *   dw [nout, nin] += dout^T * in [rows, nin]
 *   dbias [nout] += column sums of dout
 * din is split by rows (or by its columns when rows are few), dw by its rows
 * or columns, whichever is longer: the sum over rows (sgemm's k) is never
 * split, so no two threads write one element. */
static void cpu_matmul_backward(enc_backend *be, float *din, float *dw, float *dbias,
                                const float *dout, int lddo, const float *in, const float *w,
                                int rows, int nin, int nout)
{
    if (lddo == 0)
        lddo = nout;
    assert(rows >= 0 && nin > 0 && nout > 0 && lddo >= nout);
    if (rows == 0)
        return;
    double work = (double)rows * nin * nout;
    int nt = work < 1 << 18 ? 1 : be->nthreads;
    if (din != NULL) {
        assert(w != NULL);
        int by_rows = rows >= nin, step;
        int nb = split16(by_rows ? rows : nin, nt, &step);
        ENC__PARALLEL_FOR(nb < nt ? nb : nt, static, 1)
        for (int i = 0; i < nb; i++) {
            int lo = i * step, len = by_rows ? rows : nin;
            int n = len - lo < step ? len - lo : step;
            if (by_rows)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, nin, nout, 1.0f,
                            dout + (size_t)lo * lddo, lddo, w, nin, 1.0f,
                            din + (size_t)lo * nin, nin);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, n, nout, 1.0f, dout,
                            lddo, w + lo, nin, 1.0f, din + lo, nin);
        }
    }
    if (dw != NULL) {
        assert(in != NULL);
        int by_out = nout >= nin, step;
        int nb = split16(by_out ? nout : nin, nt, &step);
        ENC__PARALLEL_FOR(nb < nt ? nb : nt, static, 1)
        for (int i = 0; i < nb; i++) {
            int lo = i * step, len = by_out ? nout : nin;
            int n = len - lo < step ? len - lo : step;
            if (by_out)
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, nin, rows, 1.0f,
                            dout + lo, lddo, in, nin, 1.0f, dw + (size_t)lo * nin, nin);
            else
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nout, n, rows, 1.0f, dout,
                            lddo, in + lo, nin, 1.0f, dw + lo, nin);
        }
    }
    if (dbias != NULL) {
        int nb = (nout + COLBLK - 1) / COLBLK;
        ENC__PARALLEL_FOR(nth(be, (size_t)rows * nout) < nb ? nth(be, (size_t)rows * nout) : nb,
                          static)
        for (int i = 0; i < nb; i++) {
            int lo = i * COLBLK, n = nout - lo < COLBLK ? nout - lo : COLBLK;
            colsum_block(dbias + lo, dout + lo, (size_t)lddo, rows, n);
        }
    }
}

/* Per-row statistics (mean, rstd) in double: 2 per row. */
static size_t cpu_layernorm_backward_scratch(enc_backend *be, int rows, int dim)
{
    (void)be;
    (void)dim;
    return 4 * (size_t)rows;
}

/* Twin of layernorm, in [rows, dim], dout [rows, dim]:
 *   din += rstd * (g - mean(g) - xhat * mean(g xhat)),  g = dout * w
 *   dw [dim] += sum_r dout * xhat;  db [dim] += sum_r dout
 * Pass 1 (rows split over the team) recomputes mean and rstd as the
 * forward does, in double, keeps them in scratch and writes din; pass 2
 * (columns split) sums dw and db over the rows.  scratch: 4 * rows floats,
 * used as 2 * rows doubles. */
static void cpu_layernorm_backward(enc_backend *be, float *din, float *dw, float *db,
                                   const float *dout, const float *in, const float *w, int rows,
                                   int dim, float eps, float *scratch)
{
    assert(((uintptr_t)scratch & 7) == 0);
    double *st = (double *)(void *)scratch;
    size_t work = (size_t)rows * (size_t)dim;
    ENC__PARALLEL_FOR(nth(be, work), static)
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * dim, *g = dout + (size_t)r * dim;
        double s = 0.0;
        ENC__OMP(simd reduction(+ : s))
        for (int j = 0; j < dim; j++)
            s += x[j];
        double mean = s / dim, v = 0.0;
        ENC__OMP(simd reduction(+ : v))
        for (int j = 0; j < dim; j++) {
            double d = (double)x[j] - mean;
            v += d * d;
        }
        double rstd = 1.0 / sqrt(v / dim + eps);
        st[2 * (size_t)r] = mean;
        st[2 * (size_t)r + 1] = rstd;
        if (din == NULL)
            continue;
        double a = 0.0, b = 0.0;
        ENC__OMP(simd reduction(+ : a, b))
        for (int j = 0; j < dim; j++) {
            double gj = (double)g[j] * w[j];
            a += gj;
            b += gj * (((double)x[j] - mean) * rstd);
        }
        a /= dim;
        b /= dim;
        float *restrict o = din + (size_t)r * dim;
        ENC__OMP(simd)
        for (int j = 0; j < dim; j++) {
            double xh = ((double)x[j] - mean) * rstd;
            o[j] += (float)(rstd * ((double)g[j] * w[j] - a - xh * b));
        }
    }
    if (dw == NULL && db == NULL)
        return;
    int nb = (dim + COLBLK - 1) / COLBLK;
    int nt = nth(be, work) < nb ? nth(be, work) : nb;
    ENC__PARALLEL_FOR(nt, static)
    for (int i = 0; i < nb; i++) {
        int lo = i * COLBLK, n = dim - lo < COLBLK ? dim - lo : COLBLK;
        double sw[COLBLK] = {0}, sb[COLBLK] = {0};
        for (int r = 0; r < rows; r++) {
            const float *restrict x = in + (size_t)r * dim + lo;
            const float *restrict g = dout + (size_t)r * dim + lo;
            double mean = st[2 * (size_t)r], rstd = st[2 * (size_t)r + 1];
            ENC__OMP(simd)
            for (int j = 0; j < n; j++) {
                sw[j] += (double)g[j] * (((double)x[j] - mean) * rstd);
                sb[j] += g[j];
            }
        }
        for (int j = 0; j < n; j++) {
            if (dw != NULL)
                dw[lo + j] += (float)sw[j];
            if (db != NULL)
                db[lo + j] += (float)sb[j];
        }
    }
}

/* din [n] = dout [n] * gelu'(in [n]), gelu'(x) = Phi(x) + x phi(x), with
 * the forward's erf; in place allowed (each element read before its write). */
ENC__CLONES static void gelu_backward_span(float *din, const float *in, const float *dout,
                                           size_t n)
{
    ENC__OMP(simd)
    for (size_t i = 0; i < n; i++) {
        float x = in[i];
        float e = erf_pos(fabsf(x) * 0.70710678118654752f);
        e = copysignf(e, x);
        float cdf = 0.5f * (1.0f + e);
        float pdf = 0.39894228040143268f * exp_fast(-0.5f * x * x);
        din[i] = dout[i] * (cdf + x * pdf);
    }
}

static void cpu_gelu_backward(enc_backend *be, float *din, const float *in, const float *dout,
                              size_t n)
{
    chunked(be, gelu_backward_span, din, in, dout, n);
}

/* One row: din [n] = p * (d - sum(p * d)); din may be d. */
static void softmax_backward_row(float *din, const float *restrict p, const float *d, int n)
{
    double s = 0.0;
    ENC__OMP(simd reduction(+ : s))
    for (int j = 0; j < n; j++)
        s += (double)p[j] * d[j];
    float sf = (float)s;
    ENC__OMP(simd)
    for (int j = 0; j < n; j++)
        din[j] = p[j] * (d[j] - sf);
}

/* din [rows, cols] = out * (dout - rowsum(out * dout)), out = softmax(in) */
static void cpu_softmax_backward(enc_backend *be, float *din, const float *out, const float *dout,
                                 int rows, int cols)
{
    size_t work = (size_t)rows * (size_t)cols;
    ENC__PARALLEL_FOR(nth(be, work), static)
    for (int r = 0; r < rows; r++)
        softmax_backward_row(din + (size_t)r * cols, out + (size_t)r * cols,
                             dout + (size_t)r * cols, cols);
}

/* Two blocks per thread: probabilities and their gradient, [min(T, ATT_ROWS), T]. */
static size_t cpu_attention_backward_scratch(enc_backend *be, int B, int T, int H)
{
    (void)B;
    (void)H;
    size_t rows = T < ATT_ROWS ? (size_t)T : ATT_ROWS;
    return (size_t)be->nthreads * 2 * rows * (size_t)T;
}

/* Twin of attention, per batch b and head h (hd = D / H, scale = hd^-1/2),
 * with Q, K, V [T, hd] the head's columns of qkv [B, T, 3D] and dO [T, hd]
 * those of dout [B, T, D]; for each block of ATT_ROWS query rows:
 *   P  = softmax(scale Q K^T + maskbias)     (recomputed, as the forward)
 *   dV += P^T dO;   dP = dO V^T
 *   dS = P * (dP - rowsum(P * dP)), 0 for masked keys
 *   dQ = scale dS K;   dK += scale dS^T Q
 * written into dqkv [B, T, 3D].  Tasks are (batch, head): dK and dV sum
 * over every query row, so one task owns them. */
static void cpu_attention_backward(enc_backend *be, float *dqkv, const float *dout,
                                   const float *qkv, const float *mask, float *scratch, int B,
                                   int T, int D, int H)
{
    assert(H > 0 && D % H == 0 && T > 0);
    const int hd = D / H;
    const int ld = 3 * D;
    const float scale = 1.0f / sqrtf((float)hd);
    const int rows = T < ATT_ROWS ? T : ATT_ROWS;
    const int ntasks = B * H;
    double work = (double)B * H * T * (double)T * hd;
    ENC__PARALLEL_FOR(work >= (1 << 18) ? be->nthreads : 1, dynamic, 1)
    for (int task = 0; task < ntasks; task++) {
        int b = task / H, h = task % H;
        const float *base = qkv + (size_t)b * T * ld;
        const float *q = base + h * hd, *k = base + D + h * hd, *v = base + 2 * D + h * hd;
        float *dbase = dqkv + (size_t)b * T * ld;
        float *dq = dbase + h * hd, *dk = dbase + D + h * hd, *dv = dbase + 2 * D + h * hd;
        const float *dO = dout + (size_t)b * T * D + h * hd;
        const float *mb = mask ? mask + (size_t)b * T : NULL;
        float *P = scratch + (size_t)thread_id() * 2 * rows * T, *dP = P + (size_t)rows * T;
        for (int t = 0; t < T; t++) {
            memset(dk + (size_t)t * ld, 0, (size_t)hd * sizeof(float));
            memset(dv + (size_t)t * ld, 0, (size_t)hd * sizeof(float));
        }
        for (int i0 = 0; i0 < T; i0 += rows) {
            int n = T - i0 < rows ? T - i0 : rows;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, T, hd, scale,
                        q + (size_t)i0 * ld, ld, k, ld, 0.0f, P, T);
            for (int i = 0; i < n; i++) {
                float *restrict s = P + (size_t)i * T;
                if (mb != NULL) {
                    ENC__OMP(simd)
                    for (int j = 0; j < T; j++)
                        s[j] += (1.0f - mb[j]) * -FLT_MAX;
                }
                softmax_row(s, T);
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, T, hd, 1.0f,
                        dO + (size_t)i0 * D, D, v, ld, 0.0f, dP, T);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, n, 1.0f, P, T,
                        dO + (size_t)i0 * D, D, 1.0f, dv, ld);
            for (int i = 0; i < n; i++) {
                float *ds = dP + (size_t)i * T;
                softmax_backward_row(ds, P + (size_t)i * T, ds, T);
                if (mb != NULL) {
                    ENC__OMP(simd)
                    for (int j = 0; j < T; j++)
                        ds[j] = fsel(mb[j] != 1.0f, 0.0f, ds[j]);
                }
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, hd, T, scale, dP, T, k, ld,
                        0.0f, dq + (size_t)i0 * ld, ld);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hd, n, scale, dP, T,
                        q + (size_t)i0 * ld, ld, 1.0f, dk, ld);
        }
    }
}

/* Twin of patch_embed: for each image b,
 *   dw [D, K] += dout_b^T [D, N] im2col(in_b) [N, K];  dbias [D] += column sums of dout_b
 *   din_b += im2col's transpose of dout_b [N, D] w [D, K] (patches do not overlap,
 *   so each input element receives one entry: a permutation)
 * with dout_b [N, D] at dout + b * dout_bstride. */
static void cpu_patch_embed_backward(enc_backend *be, float *din, float *dw, float *dbias,
                                     const float *dout, size_t dout_bstride, const float *in,
                                     const float *w, const enc_patch_geom *g, int B, int D,
                                     float *scratch)
{
    const size_t N = enc_patch_count(g), K = enc_patch_dim(g);
    const size_t img = (size_t)g->channels * g->size[0] * g->size[1] * g->size[2];
    assert(dout_bstride >= N * (size_t)D);
    assert(din == NULL || (w != NULL && g->order == ENC_PATCH_CONV));
    for (int b = 0; b < B; b++) {
        const float *db_ = dout + (size_t)b * dout_bstride;
        if (dw != NULL || dbias != NULL) {
            im2col(be, scratch, in + (size_t)b * img, g);
            cpu_matmul_backward(be, NULL, dw, dbias, db_, D, scratch, NULL, (int)N, (int)K, D);
        }
        if (din == NULL)
            continue;
        /* scratch [N, K] = dout_b w, then scattered back (im2col's inverse) */
        cpu_zero(be, scratch, N * K);
        cpu_matmul_backward(be, scratch, NULL, NULL, db_, D, NULL, w, (int)N, (int)K, D);
        const int Z = g->size[0], Y = g->size[1], X = g->size[2];
        const int pz = g->patch[0], py = g->patch[1], px = g->patch[2];
        const int gy = Y / py, gx = X / px;
        const size_t plane = (size_t)Y * X, chan = (size_t)Z * plane;
        float *dst0 = din + (size_t)b * img;
        ENC__PARALLEL_FOR(nth(be, N * K), static)
        for (size_t n = 0; n < N; n++) {
            const int iz = (int)(n / ((size_t)gy * gx)), iy = (int)(n / gx % gy);
            const int ix = (int)(n % gx);
            const float *s = scratch + n * K;
            float *d0 = dst0 + (size_t)iz * pz * plane + (size_t)iy * py * X + (size_t)ix * px;
            for (int c = 0; c < g->channels; c++)
                for (int z = 0; z < pz; z++)
                    for (int y = 0; y < py; y++, s += px) {
                        float *d = d0 + c * chan + z * plane + (size_t)y * X;
                        for (int x = 0; x < px; x++)
                            d[x] += s[x];
                    }
        }
    }
}

/* Twin of vit_tokens, dx [B, 1 + N, D]:
 *   dcls [D] += sum_b dx[b, 0];  dpos[t'] += sum_b dx[b, t] for the rows t
 *   that pos row t' was added to (t' = t, or t - 1 without a [CLS] row).
 * Split by token: each thread owns its rows of dpos. */
static void cpu_vit_tokens_backward(enc_backend *be, float *dcls, float *dpos, const float *dx,
                                    int pos_has_cls, int B, int N, int D)
{
    const int T = N + 1;
    size_t work = (size_t)B * T * D;
    ENC__PARALLEL_FOR(nth(be, work), static)
    for (int t = 0; t < T; t++) {
        float *restrict p = NULL;
        if (dpos != NULL && pos_has_cls)
            p = dpos + (size_t)t * D;
        else if (dpos != NULL && t > 0)
            p = dpos + (size_t)(t - 1) * D;
        float *restrict c = t == 0 ? dcls : NULL;
        for (int b = 0; b < B; b++) {
            const float *restrict x = dx + ((size_t)b * T + t) * D;
            if (p != NULL) {
                ENC__OMP(simd)
                for (int j = 0; j < D; j++)
                    p[j] += x[j];
            }
            if (c != NULL) {
                ENC__OMP(simd)
                for (int j = 0; j < D; j++)
                    c[j] += x[j];
            }
        }
    }
}

/* Twin of embedding, dout [B, L, D], ids [B, L]:
 *   dtable[ids[r]] += dout[r];  dpos[r % L] += dout[r];  dtype_row += dout[r]
 * Repeated ids make this a scatter-add, so the team splits the columns
 * (16-float blocks) and each thread walks every token in order. */
static void cpu_embedding_backward(enc_backend *be, float *dtable, float *dpos, float *dtype_row,
                                   const float *dout, const int32_t *ids, int B, int L, int D)
{
    size_t work = (size_t)B * L * D;
    int step, nb = split16(D, nth(be, work), &step);
    ENC__PARALLEL_FOR(nb, static, 1)
    for (int i = 0; i < nb; i++) {
        int lo = i * step, n = D - lo < step ? D - lo : step;
        for (int r = 0; r < B * L; r++) {
            const float *restrict g = dout + (size_t)r * D + lo;
            float *restrict e = dtable + (size_t)ids[r] * D + lo;
            ENC__OMP(simd)
            for (int j = 0; j < n; j++)
                e[j] += g[j];
            if (dpos != NULL) {
                float *restrict p = dpos + (size_t)(r % L) * D + lo;
                ENC__OMP(simd)
                for (int j = 0; j < n; j++)
                    p[j] += g[j];
            }
            if (dtype_row != NULL) {
                float *restrict ty = dtype_row + lo;
                ENC__OMP(simd)
                for (int j = 0; j < n; j++)
                    ty[j] += g[j];
            }
        }
    }
}

/* dx [B, T, D] at t = 0 += dout [B, D] */
static void cpu_cls_pool_backward(enc_backend *be, float *dx, const float *dout, int B, int T,
                                  int D)
{
    (void)be;
    for (int b = 0; b < B; b++) {
        float *restrict o = dx + (size_t)b * T * D;
        const float *restrict g = dout + (size_t)b * D;
        ENC__OMP(simd)
        for (int j = 0; j < D; j++)
            o[j] += g[j];
    }
}

/* Twin of l2norm, in, dout [rows, dim]: n = max(||in||, 1e-12), y = in / n,
 *   din = (dout - y (y . dout)) / n, or dout / 1e-12 where the clamp holds
 * (the output is then in * 1e12, linear).  The norm is taken as the forward
 * takes it, in float; the rest in double. */
static void cpu_l2norm_backward(enc_backend *be, float *din, const float *in, const float *dout,
                                int rows, int dim)
{
    size_t work = (size_t)rows * (size_t)dim;
    ENC__PARALLEL_FOR(nth(be, work), static)
    for (int r = 0; r < rows; r++) {
        const float *x = in + (size_t)r * dim, *g = dout + (size_t)r * dim;
        float *o = din + (size_t)r * dim;
        float s = 0.0f;
        ENC__OMP(simd reduction(+ : s))
        for (int j = 0; j < dim; j++)
            s += x[j] * x[j];
        float nrm = sqrtf(s);
        if (!(nrm > 1e-12f)) {
            for (int j = 0; j < dim; j++)
                o[j] = (float)((double)g[j] * 1e12);
            continue;
        }
        double inv = 1.0 / nrm, dot = 0.0;
        ENC__OMP(simd reduction(+ : dot))
        for (int j = 0; j < dim; j++)
            dot += (double)x[j] * g[j];
        dot *= inv; /* y . dout */
        ENC__OMP(simd)
        for (int j = 0; j < dim; j++)
            o[j] = (float)(((double)g[j] - (double)x[j] * inv * dot) * inv);
    }
}

/* out [B, T - j0] += alpha * sum_h softmax(scale q_0 K^T + maskbias)[j0..T), per b:
 * row 0 of each head's probabilities, as attention computes them, from one
 * matrix-vector product.  scratch [T].  Serial: T * D per batch element is
 * nothing next to the layer it reports on. */
static void cpu_cls_attention(enc_backend *be, float *out, const float *qkv, const float *mask,
                              float *scratch, int B, int T, int D, int H, int j0, float alpha)
{
    (void)be;
    assert(H > 0 && D % H == 0 && j0 >= 0 && j0 <= T);
    const int hd = D / H, ld = 3 * D, nk = T - j0;
    const float scale = 1.0f / sqrtf((float)hd);
    for (int b = 0; b < B; b++) {
        const float *base = qkv + (size_t)b * T * ld;
        const float *mb = mask ? mask + (size_t)b * T : NULL;
        float *restrict o = out + (size_t)b * nk;
        for (int h = 0; h < H; h++) {
            float *restrict s = scratch;
            cblas_sgemv(CblasRowMajor, CblasNoTrans, T, hd, scale, base + D + h * hd, ld,
                        base + h * hd, 1, 0.0f, s, 1);
            if (mb != NULL) {
                ENC__OMP(simd)
                for (int j = 0; j < T; j++)
                    s[j] += (1.0f - mb[j]) * -FLT_MAX;
            }
            softmax_row(s, T);
            ENC__OMP(simd)
            for (int j = 0; j < nk; j++)
                o[j] += alpha * s[j0 + j];
        }
    }
}

/* ---- convolution ------------------------------------------------------------------ */

/* col [N', K] and, for the backward, its gradient [N', K]. */
static size_t cpu_conv_scratch(enc_backend *be, const enc_conv_geom *g)
{
    (void)be;
    return 2 * enc_conv_count(g) * enc_conv_dim(g);
}

/* What the unfolding loops need of g: output grid, unfolded width, strides
 * of the input. */
typedef struct conv_dims {
    int o[3], N, kz, ky, kx;
    size_t K, plane, chan;
} conv_dims;

static conv_dims conv_dims_of(const enc_conv_geom *g)
{
    conv_dims d;
    enc_conv_out(g, d.o);
    d.N = d.o[0] * d.o[1] * d.o[2];
    d.K = enc_conv_dim(g);
    d.kz = g->kernel[0], d.ky = g->kernel[1], d.kx = g->kernel[2];
    d.plane = (size_t)g->size[1] * g->size[2];
    d.chan = (size_t)g->size[0] * d.plane;
    return d;
}

/* The input voxel of output position n's first tap (may lie in the padding). */
static void conv_origin(const enc_conv_geom *g, const conv_dims *d, int n, int org[3])
{
    org[0] = n / (d->o[1] * d->o[2]) * g->stride[0] - g->pad[0];
    org[1] = n / d->o[2] % d->o[1] * g->stride[1] - g->pad[1];
    org[2] = n % d->o[2] * g->stride[2] - g->pad[2];
}

/* The unfolded input of one image img [cin, Z, Y, X]: row n of col [N', K]
 * is output position n (z, y, x row-major), its columns (c, kz, ky, kx) as
 * the weight's; taps outside the input (padding) are 0. */
static void conv_im2col(enc_backend *be, float *restrict col, const float *restrict img,
                        const enc_conv_geom *g)
{
    const conv_dims d = conv_dims_of(g);
    const int Z = g->size[0], Y = g->size[1], X = g->size[2];
    ENC__PARALLEL_FOR(nth(be, (size_t)d.N * d.K), static)
    for (int n = 0; n < d.N; n++) {
        int org[3];
        conv_origin(g, &d, n, org);
        float *dst = col + (size_t)n * d.K;
        for (int c = 0; c < g->cin; c++)
            for (int a = 0; a < d.kz; a++)
                for (int b = 0; b < d.ky; b++, dst += d.kx) {
                    const int z = org[0] + a, y = org[1] + b;
                    if (z < 0 || z >= Z || y < 0 || y >= Y) {
                        memset(dst, 0, (size_t)d.kx * sizeof(float));
                        continue;
                    }
                    const float *src = img + c * d.chan + (size_t)z * d.plane + (size_t)y * X;
                    for (int e = 0; e < d.kx; e++) {
                        const int x = org[2] + e;
                        dst[e] = x >= 0 && x < X ? src[x] : 0.0f;
                    }
                }
    }
}

/* img [cin, Z, Y, X] += the columns of col [N', K] folded back onto the
 * taps they came from.  Split by input channel: each thread owns whole
 * channels, and every element sums its taps in position order. */
static void conv_col2im(enc_backend *be, float *restrict img, const float *restrict col,
                        const enc_conv_geom *g)
{
    const conv_dims d = conv_dims_of(g);
    const int Z = g->size[0], Y = g->size[1], X = g->size[2];
    const int nt = nth(be, (size_t)d.N * d.K) < g->cin ? nth(be, (size_t)d.N * d.K) : g->cin;
    ENC__PARALLEL_FOR(nt, static)
    for (int c = 0; c < g->cin; c++) {
        for (int n = 0; n < d.N; n++) {
            int org[3];
            conv_origin(g, &d, n, org);
            const float *src = col + (size_t)n * d.K + (size_t)c * d.kz * d.ky * d.kx;
            for (int a = 0; a < d.kz; a++)
                for (int b = 0; b < d.ky; b++, src += d.kx) {
                    const int z = org[0] + a, y = org[1] + b;
                    if (z < 0 || z >= Z || y < 0 || y >= Y)
                        continue;
                    float *dst = img + c * d.chan + (size_t)z * d.plane + (size_t)y * X;
                    for (int e = 0; e < d.kx; e++) {
                        const int x = org[2] + e;
                        if (x >= 0 && x < X)
                            dst[x] += src[e];
                    }
                }
        }
    }
}

/* Per image: out_b [cout, N'] = w [cout, K] col_b^T + bias, the N' columns
 * split over the team. */
static void cpu_conv(enc_backend *be, float *out, const float *in, const float *w,
                     const float *bias, const enc_conv_geom *g, int B, float *scratch)
{
    const int N = (int)enc_conv_count(g), K = (int)enc_conv_dim(g), Co = g->cout;
    const size_t img = (size_t)g->cin * g->size[0] * g->size[1] * g->size[2];
    int step;
    const int nt = (double)N * K * Co < 1 << 18 ? 1 : be->nthreads;
    const int nb = split16(N, nt, &step);
    for (int b = 0; b < B; b++) {
        float *ob = out + (size_t)b * Co * N;
        conv_im2col(be, scratch, in + (size_t)b * img, g);
        ENC__PARALLEL_FOR(nb < nt ? nb : nt, static, 1)
        for (int i = 0; i < nb; i++) {
            const int lo = i * step, n = N - lo < step ? N - lo : step;
            for (int c = 0; c < Co; c++) {
                const float v = bias ? bias[c] : 0.0f;
                float *r = ob + (size_t)c * N + lo;
                for (int j = 0; j < n; j++)
                    r[j] = v;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Co, n, K, 1.0f, w, K,
                        scratch + (size_t)lo * K, K, 1.0f, ob + lo, N);
        }
    }
}

/* Twin of conv, per image in order:
 *   dw [cout, K] += dout_b [cout, N'] col_b [N', K]       (split by K)
 *   dbias [cout] += row sums of dout_b                      (split by channel)
 *   dcol [N', K] = dout_b^T w, folded onto din_b            (split by N', then cin) */
static void cpu_conv_backward(enc_backend *be, float *din, float *dw, float *dbias,
                              const float *dout, const float *in, const float *w,
                              const enc_conv_geom *g, int B, float *scratch)
{
    const int N = (int)enc_conv_count(g), K = (int)enc_conv_dim(g), Co = g->cout;
    const size_t img = (size_t)g->cin * g->size[0] * g->size[1] * g->size[2];
    float *col = scratch, *dcol = scratch + (size_t)N * K;
    const int nt = (double)N * K * Co < 1 << 18 ? 1 : be->nthreads;
    for (int b = 0; b < B; b++) {
        const float *db_ = dout + (size_t)b * Co * N;
        if (dw != NULL) {
            int step, nb;
            conv_im2col(be, col, in + (size_t)b * img, g);
            nb = split16(K, nt, &step);
            ENC__PARALLEL_FOR(nb < nt ? nb : nt, static, 1)
            for (int i = 0; i < nb; i++) {
                const int lo = i * step, n = K - lo < step ? K - lo : step;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Co, n, N, 1.0f, db_, N,
                            col + lo, K, 1.0f, dw + lo, K);
            }
        }
        if (dbias != NULL) {
            ENC__PARALLEL_FOR(nth(be, (size_t)N * Co) < Co ? nth(be, (size_t)N * Co) : Co, static)
            for (int c = 0; c < Co; c++) {
                double acc = 0;
                const float *r = db_ + (size_t)c * N;
                for (int j = 0; j < N; j++)
                    acc += r[j];
                dbias[c] += (float)acc;
            }
        }
        if (din != NULL) {
            int step;
            const int nb = split16(N, nt, &step);
            ENC__PARALLEL_FOR(nb < nt ? nb : nt, static, 1)
            for (int i = 0; i < nb; i++) {
                const int lo = i * step, n = N - lo < step ? N - lo : step;
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, n, K, Co, 1.0f, db_ + lo, N,
                            w, K, 0.0f, dcol + (size_t)lo * K, K);
            }
            conv_col2im(be, din + (size_t)b * img, dcol, g);
        }
    }
}

/* ---- the table ------------------------------------------------------------------- */

static const enc_backend_i cpu_iface = {
    /* .name              = */ "cpu",
    /* .host_memory       = */ 1,
    /* .alloc             = */ cpu_alloc,
    /* .free              = */ cpu_free,
    /* .upload            = */ cpu_copy_bytes,
    /* .download          = */ cpu_copy_bytes,
    /* .sync              = */ cpu_sync,
    /* .attention_scratch = */ cpu_attention_scratch,
    /* .patch_scratch     = */ cpu_patch_scratch,
    /* .copy              = */ cpu_copy,
    /* .matmul            = */ cpu_matmul,
    /* .layernorm         = */ cpu_layernorm,
    /* .gelu              = */ cpu_gelu,
    /* .add               = */ cpu_add,
    /* .softmax           = */ cpu_softmax,
    /* .attention         = */ cpu_attention,
    /* .patch_embed       = */ cpu_patch_embed,
    /* .vit_tokens        = */ cpu_vit_tokens,
    /* .embedding         = */ cpu_embedding,
    /* .cls_pool          = */ cpu_cls_pool,
    /* .l2norm            = */ cpu_l2norm,
    /* .conv_scratch      = */ cpu_conv_scratch,
    /* .conv              = */ cpu_conv,
    /* .rope              = */ cpu_rope,
    /* .swiglu            = */ cpu_swiglu,
    /* .scale_add         = */ cpu_scale_add,
    /* .attn_pool_scratch = */ cpu_attn_pool_scratch,
    /* .attn_pool         = */ cpu_attn_pool,
};

static const enc_backend_train_i cpu_train = {
    /* .layernorm_backward_scratch = */ cpu_layernorm_backward_scratch,
    /* .attention_backward_scratch = */ cpu_attention_backward_scratch,
    /* .zero                       = */ cpu_zero,
    /* .matmul_backward            = */ cpu_matmul_backward,
    /* .layernorm_backward         = */ cpu_layernorm_backward,
    /* .gelu_backward              = */ cpu_gelu_backward,
    /* .softmax_backward           = */ cpu_softmax_backward,
    /* .attention_backward         = */ cpu_attention_backward,
    /* .patch_embed_backward       = */ cpu_patch_embed_backward,
    /* .vit_tokens_backward        = */ cpu_vit_tokens_backward,
    /* .embedding_backward         = */ cpu_embedding_backward,
    /* .cls_pool_backward          = */ cpu_cls_pool_backward,
    /* .l2norm_backward            = */ cpu_l2norm_backward,
    /* .cls_attention              = */ cpu_cls_attention,
    /* .conv_backward              = */ cpu_conv_backward,
};

static void cpu_destroy(enc_backend *be)
{
    free(be);
}

enc_backend *enc_backend_cpu_new(int nthreads)
{
    if (nthreads <= 0) {
#ifdef _OPENMP
        nthreads = omp_get_num_procs();
#else
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = n > 0 ? (int)n : 1;
#endif
    }
    enc_backend *be = calloc(1, sizeof *be);
    if (be == NULL)
        return NULL;
    be->iface = cpu_iface;
    be->train = cpu_train;
    be->nthreads = nthreads;
    be->destroy = cpu_destroy;
    openblas_set_num_threads(1); /* our team does the threading: see the top */
    return be;
}

void enc_backend_free(enc_backend *be)
{
    if (be != NULL && be->destroy != NULL)
        be->destroy(be);
}
