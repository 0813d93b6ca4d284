/* test_models.c - the encoders end to end.
 *
 *  - Parity with the reference fixtures (tests/fixtures/models/<arch>/, made
 *    by PyTorch, MONAI, timm, transformers and colipri; see docs/encoder.md): every
 *    input in io.safetensors is encoded, every layer's residual stream and
 *    the embeddings compared; embeddings must agree to 1e-4, per-layer
 *    differences are printed.
 *  - Random models of all three architectures (odd sizes, batch 3, padding)
 *    against a plain double-precision forward written here from the doc.
 *  - Directories: a model written with enc_st_write loads back to the same
 *    numbers and its id is the file's SHA-256; a missing or misshapen tensor
 *    and bad config.json values are refused with a message naming them.
 *  - The state API: kinds, bounds, batch consistency, padding invariance,
 *    kept hidden states and attention probabilities, two threads.
 *
 * Fixtures are found under $top_srcdir (set by make check), else relative
 * to this file's path.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "encoder/model.h"
#include "encoder/safetensors.h"
#include "testutil.h"
#include "util/util.h"

/* ---- paths ------------------------------------------------------------------ */

static char *fixture_dir(const char *arch)
{
    char base[1024];
    const char *top = getenv("top_srcdir");
    if (top != NULL && *top) {
        snprintf(base, sizeof base, "%s/", top);
    } else {
        const char *me = __FILE__, *tail = "tests/encoder/test_models.c";
        size_t n = strlen(me), t = strlen(tail);
        size_t keep = n >= t && strcmp(me + n - t, tail) == 0 ? n - t : 0;
        snprintf(base, sizeof base, "%.*s", (int)keep, me);
    }
    size_t len = strlen(base) + strlen(arch) + 64;
    char *p = malloc(len);
    assert_non_null(p);
    snprintf(p, len, "%stests/fixtures/models/%s", base, arch);
    struct stat st;
    if (stat(p, &st) != 0) {
        free(p);
        return NULL;
    }
    return p;
}

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    s[n] = '\0';
    if (len)
        *len = (size_t)n;
    return s;
}

static void write_all(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m))
            m = d; /* NaN wins */
    }
    return m;
}

/* ---- fixture parity ------------------------------------------------------------- */

/* The fixture in tests/fixtures/models/<sub>, a model of architecture arch. */
static void run_fixture(const char *sub, const char *arch)
{
    char *dir = fixture_dir(sub);
    if (dir == NULL) {
        printf("  %s: no fixture directory, skipped\n", arch);
        skip();
    }
    char err[512] = "";
    enc_model *m;
    int rc = enc_model_load(dir, NULL, &m, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, ENC_OK);
    assert_string_equal(enc_model_arch(m), arch);
    char *iop = tu_path(dir, "io.safetensors");
    enc_st *io;
    assert_int_equal(enc_st_open(iop, &io, err, sizeof err), ENC_OK);
    const int E = enc_model_embed_dim(m);
    static const char *const kinds[] = {"image", "volume", "text"};
    int ran = 0;
    for (int k = 0; k < 3; k++) {
        char name[64];
        snprintf(name, sizeof name, k == 2 ? "%s.input_ids" : "%s.input", kinds[k]);
        enc_st_info in;
        if (enc_st_info_get(io, name, &in) != ENC_OK)
            continue;
        assert_true(enc_model_has(m, (enc_kind)k));
        const float *x;
        assert_int_equal(enc_st_get(io, name, in.rank, in.shape, &x, err, sizeof err), ENC_OK);
        int B = (int)in.shape[0];
        enc_state_opts so = {.flags = ENC_STATE_HIDDEN};
        enc_state *s;
        assert_int_equal(enc_state_new(m, (enc_kind)k, B, &so, &s, err, sizeof err), ENC_OK);
        float *emb = malloc((size_t)B * E * sizeof(float));
        assert_non_null(emb);
        if (k == 0) {
            rc = enc_encode_image(s, x, B, emb);
        } else if (k == 1) {
            rc = enc_encode_volume(s, x, B, emb);
        } else {
            int L = (int)in.shape[1];
            const float *mk;
            snprintf(name, sizeof name, "text.attention_mask");
            assert_int_equal(enc_st_get(io, name, 2, in.shape, &mk, err, sizeof err), ENC_OK);
            int32_t *ids = malloc((size_t)B * L * sizeof(int32_t));
            int32_t *mask = malloc((size_t)B * L * sizeof(int32_t));
            assert_non_null(ids);
            assert_non_null(mask);
            for (size_t i = 0; i < (size_t)B * L; i++)
                ids[i] = (int32_t)x[i], mask[i] = (int32_t)mk[i];
            rc = enc_encode_text(s, ids, mask, B, L, emb);
            free(ids);
            free(mask);
        }
        if (rc)
            print_error("%s\n", enc_state_errmsg(s));
        assert_int_equal(rc, ENC_OK);

        enc_input_geom g;
        assert_int_equal(enc_model_geom(m, (enc_kind)k, &g), ENC_OK);
        printf("  %-10s %-6s B=%d T=%d D=%d:", arch, kinds[k], B, enc_state_tokens(s),
               g.hidden_size);
        double worst_rel = 0;
        for (int l = 0; l <= g.num_layers; l++) {
            snprintf(name, sizeof name, "%s.hidden.%d", kinds[k], l);
            enc_st_info hi;
            assert_int_equal(enc_st_info_get(io, name, &hi), ENC_OK);
            const float *want;
            assert_int_equal(enc_st_get(io, name, hi.rank, hi.shape, &want, err, sizeof err),
                             ENC_OK);
            assert_int_equal(hi.shape[1], enc_state_tokens(s));
            const float *got = enc_state_hidden(s, l);
            assert_non_null(got);
            double d = max_abs_diff(got, want, hi.nelem), mag = 0;
            for (size_t i = 0; i < hi.nelem; i++)
                mag = fmax(mag, fabs(want[i]));
            printf(" h%d %.1e", l, d);
            worst_rel = fmax(worst_rel, d / fmax(1.0, mag));
        }
        snprintf(name, sizeof name, "%s.embed", kinds[k]);
        const float *want;
        assert_int_equal(enc_st_get(io, name, 2, (const int64_t[]){B, E}, &want, err, sizeof err),
                         ENC_OK);
        double d = max_abs_diff(emb, want, (size_t)B * E);
        printf(" | embed %.1e\n", d);
        assert_true(d <= 1e-4);
        assert_true(worst_rel <= 1e-3); /* hidden states: relative to their scale */
        free(emb);
        enc_state_free(s);
        ran++;
    }
    assert_true(ran > 0);
    /* the id is the SHA-256 of model.safetensors */
    char *stp = tu_path(dir, "model.safetensors");
    size_t n;
    char *bytes = read_all(stp, &n);
    uint8_t h[UTIL_SHA256_SIZE];
    char hex[2 * UTIL_SHA256_SIZE + 1];
    util_sha256(bytes, n, h);
    util_sha256_hex(h, hex);
    assert_string_equal(enc_model_id(m), hex);
    free(bytes);
    free(stp);
    enc_st_close(io);
    free(iop);
    enc_model_free(m);
    free(dir);
}

static void test_fixture_medsem(void **state)
{
    (void)state;
    run_fixture("medsem", "medsem");
}

/* medsem with a convolution stem ahead of the patch embeddings */
static void test_fixture_medsem_stem(void **state)
{
    (void)state;
    run_fixture("medsem-stem", "medsem");
}

static void test_fixture_m3d(void **state)
{
    (void)state;
    run_fixture("m3d-clip", "m3d-clip");
}

static void test_fixture_biomedclip(void **state)
{
    (void)state;
    run_fixture("biomedclip", "biomedclip");
}

/* COLIPRI (colipri 0.1.3's own classes: Primus EVA trunk with 3-D RoPE,
 * SwiGLU and layer scale, attention pooling; BERT with attention pooling) */
static void test_fixture_colipri(void **state)
{
    (void)state;
    run_fixture("colipri", "colipri");
}

/* ---- a plain forward in double ----------------------------------------------------------
 *
 * Written from docs/encoder.md, one loop per definition, looking tensors up
 * by name in the model's parameter table. */

typedef struct layout {
    const char *cfg;
    /* vision */
    const char *patch2d, *patch3d, *cls, *pos2d, *pos3d, *blocks;
    const char *norm1, *qkv, *out, *norm2, *fc1, *fc2, *norm;
    int clast3d, pos_has_cls, qkv_bias;
    double veps;
    const char *vproj, *vproj_b; /* vproj_b NULL: no bias */
    /* text */
    const char *bert;
    const char *tproj, *tproj_b, *tproj2; /* tproj2: the MLP's second layer */
} layout;

static const layout medsem_layout = {
    "{\"architecture\":\"medsem\",\"embed_dim\":12,\"logit_scale\":2.5,"
    "\"vision\":{\"hidden_size\":16,\"num_layers\":2,\"num_heads\":4,\"mlp_dim\":24,"
    "\"layer_norm_eps\":1e-6,\"in_channels\":2,\"image_size\":[12,16],\"patch_size\":[4,4],"
    "\"volume_size\":[4,8,12],\"volume_patch_size\":[2,4,4]},"
    "\"text\":{\"vocab_size\":50,\"hidden_size\":12,\"num_layers\":2,\"num_heads\":3,"
    "\"intermediate_size\":20,\"max_position_embeddings\":14,\"type_vocab_size\":2,"
    "\"layer_norm_eps\":1e-12,\"max_len\":10}}",
    "vision.patch2d", "vision.patch3d", "vision.cls_token", "vision.pos2d", "vision.pos3d",
    "vision.blocks.", "norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2",
    "vision.norm", 0, 1, 1, 1e-6, "vision.proj.weight", NULL,
    "text.", "text.proj.weight", NULL, NULL,
};

static const layout m3d_layout = {
    "{\"model_type\":\"m3d_clip\",\"in_channels\":2,\"img_size\":[4,8,12],"
    "\"patch_size\":[2,4,4],\"hidden_size\":16,\"mlp_dim\":20,\"num_layers\":2,"
    "\"num_heads\":4,\"vocab_size\":40,\"max_text_len\":9,\"pos_embed\":\"perceptron\","
    "\"spatial_dims\":3}",
    NULL, "vision_encoder.patch_embedding.patch_embeddings.1", "vision_encoder.cls_token",
    NULL, "vision_encoder.patch_embedding.position_embeddings", "vision_encoder.blocks.",
    "norm1", "attn.qkv", "attn.out_proj", "norm2", "mlp.linear1", "mlp.linear2",
    "vision_encoder.norm", 1, 0, 0, 1e-5, "mm_vision_proj.weight", "mm_vision_proj.bias",
    "language_encoder.", "mm_language_proj.weight", "mm_language_proj.bias", NULL,
};

static const layout biomedclip_layout = {
    "{\"architecture\":\"biomedclip\",\"model_cfg\":{\"embed_dim\":10,"
    "\"vision_cfg\":{\"timm_proj\":\"linear\",\"image_size\":[16,24],\"patch_size\":8,"
    "\"in_chans\":3,\"width\":16,\"layers\":2,\"heads\":2,\"mlp_ratio\":1.5},"
    "\"text_cfg\":{\"hf_proj_type\":\"mlp\",\"context_length\":8,\"vocab_size\":30,"
    "\"hidden_size\":16,\"layers\":1,\"heads\":2,\"intermediate_size\":20,"
    "\"max_position_embeddings\":10}}}",
    "visual.trunk.patch_embed.proj", NULL, "visual.trunk.cls_token", "visual.trunk.pos_embed",
    NULL, "visual.trunk.blocks.", "norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1",
    "mlp.fc2", "visual.trunk.norm", 0, 1, 1, 1e-6, "visual.head.proj.weight", NULL,
    "text.transformer.", "text.proj.0.weight", NULL, "text.proj.2.weight",
};

static const float *P(const enc_model *m, int64_t *rows, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static const float *P(const enc_model *m, int64_t *rows, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    for (size_t i = 0; i < enc_model_param_count(m); i++) {
        enc_param p;
        enc_model_param(m, i, &p);
        if (strcmp(p.name, name) == 0) {
            if (rows)
                *rows = p.shape[0];
            return p.data;
        }
    }
    print_error("no parameter %s\n", name);
    fail();
    return NULL;
}

/* y [n, out] = x [n, in] w^T + b */
static void dlin(double *y, const double *x, const float *w, const float *b, int n, int in,
                 int out)
{
    for (int r = 0; r < n; r++)
        for (int j = 0; j < out; j++) {
            double s = b ? b[j] : 0;
            for (int k = 0; k < in; k++)
                s += x[(size_t)r * in + k] * w[(size_t)j * in + k];
            y[(size_t)r * out + j] = s;
        }
}

static void dln(double *y, const double *x, const float *w, const float *b, int n, int d,
                double eps)
{
    for (int r = 0; r < n; r++) {
        const double *xr = x + (size_t)r * d;
        double mean = 0, var = 0;
        for (int j = 0; j < d; j++)
            mean += xr[j];
        mean /= d;
        for (int j = 0; j < d; j++)
            var += (xr[j] - mean) * (xr[j] - mean);
        var /= d;
        for (int j = 0; j < d; j++)
            y[(size_t)r * d + j] = (xr[j] - mean) / sqrt(var + eps) * w[j] + b[j];
    }
}

static double dgelu(double x)
{
    return 0.5 * x * (1 + erf(x / sqrt(2.0)));
}

/* o [T, D] = attention over q, k, v [T, D] each (one sequence), key mask. */
static void dattn(double *o, const double *q, const double *k, const double *v,
                  const int32_t *mask, int T, int D, int H)
{
    int hd = D / H;
    double *s = malloc((size_t)T * sizeof(double));
    assert_non_null(s);
    for (int h = 0; h < H; h++)
        for (int i = 0; i < T; i++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < T; j++) {
                double d = 0;
                for (int c = 0; c < hd; c++)
                    d += q[(size_t)i * D + h * hd + c] * k[(size_t)j * D + h * hd + c];
                s[j] = mask && !mask[j] ? -INFINITY : d / sqrt((double)hd);
                mx = fmax(mx, s[j]);
            }
            for (int j = 0; j < T; j++)
                sum += (s[j] = exp(s[j] - mx));
            for (int c = 0; c < hd; c++) {
                double a = 0;
                for (int j = 0; j < T; j++)
                    a += s[j] / sum * v[(size_t)j * D + h * hd + c];
                o[(size_t)i * D + h * hd + c] = a;
            }
        }
    free(s);
}

static void dnormalize(double *x, int n)
{
    double s = 0;
    for (int j = 0; j < n; j++)
        s += x[j] * x[j];
    s = fmax(sqrt(s), 1e-12);
    for (int j = 0; j < n; j++)
        x[j] /= s;
}

/* One input (b) of the vision tower: hidden[l] [T, D] for l = 0..L, emb [E]. */
static void ref_vit(const enc_model *m, const layout *y, int is3d, const float *in,
                    double **hidden, double *emb)
{
    enc_input_geom g;
    assert_int_equal(enc_model_geom(m, is3d ? ENC_VOLUME : ENC_IMAGE, &g), ENC_OK);
    const int C = g.channels, D = g.hidden_size, H = g.num_heads, L = g.num_layers, T = g.tokens;
    const int Z = g.size[0], Y = g.size[1], X = g.size[2];
    const int pz = g.patch[0], py = g.patch[1], px = g.patch[2];
    const int gy = Y / py, gx = X / px, N = T - 1, E = enc_model_embed_dim(m);
    const float *pw = P(m, NULL, "%s.weight", is3d ? y->patch3d : y->patch2d);
    const float *pb = P(m, NULL, "%s.bias", is3d ? y->patch3d : y->patch2d);
    const float *cls = P(m, NULL, "%s", y->cls);
    const float *pos = P(m, NULL, "%s", is3d ? y->pos3d : y->pos2d);
    int clast = is3d && y->clast3d;
    double *x = hidden[0];
    for (int d = 0; d < D; d++)
        x[d] = cls[d] + (y->pos_has_cls ? pos[d] : 0);
    for (int n = 0; n < N; n++) {
        int iz = n / (gy * gx), iy = n / gx % gy, ix = n % gx;
        for (int d = 0; d < D; d++) {
            double s = pb[d];
            int k = 0;
            if (!clast) { /* conv: weight [D, C, pz, py, px] */
                for (int c = 0; c < C; c++)
                    for (int z = 0; z < pz; z++)
                        for (int yy = 0; yy < py; yy++)
                            for (int xx = 0; xx < px; xx++, k++)
                                s += (double)pw[(size_t)d * C * pz * py * px + k] *
                                     in[(((size_t)c * Z + iz * pz + z) * Y + iy * py + yy) * X +
                                        ix * px + xx];
            } else { /* MONAI: (p1 p2 p3 c) */
                for (int z = 0; z < pz; z++)
                    for (int yy = 0; yy < py; yy++)
                        for (int xx = 0; xx < px; xx++)
                            for (int c = 0; c < C; c++, k++)
                                s += (double)pw[(size_t)d * C * pz * py * px + k] *
                                     in[(((size_t)c * Z + iz * pz + z) * Y + iy * py + yy) * X +
                                        ix * px + xx];
            }
            x[(size_t)(n + 1) * D + d] = s + pos[(size_t)(n + y->pos_has_cls) * D + d];
        }
    }
    int64_t M;
    double *h = malloc((size_t)T * D * sizeof(double)), *qkv = malloc((size_t)T * 3 * D * 8);
    double *q = malloc((size_t)T * D * 8), *k = malloc((size_t)T * D * 8);
    double *v = malloc((size_t)T * D * 8), *a = malloc((size_t)T * D * 8);
    double *o = malloc((size_t)T * D * 8);
    P(m, &M, "%s0.%s.weight", y->blocks, y->fc1);
    double *f = malloc((size_t)T * M * 8);
    for (int l = 0; l < L; l++) {
        double *xo = hidden[l + 1];
        memcpy(xo, hidden[l], (size_t)T * D * sizeof(double));
        const char *bp = y->blocks;
        dln(h, xo, P(m, NULL, "%s%d.%s.weight", bp, l, y->norm1),
            P(m, NULL, "%s%d.%s.bias", bp, l, y->norm1), T, D, y->veps);
        dlin(qkv, h, P(m, NULL, "%s%d.%s.weight", bp, l, y->qkv),
             y->qkv_bias ? P(m, NULL, "%s%d.%s.bias", bp, l, y->qkv) : NULL, T, D, 3 * D);
        for (int t = 0; t < T; t++)
            for (int d = 0; d < D; d++) {
                q[(size_t)t * D + d] = qkv[(size_t)t * 3 * D + d];
                k[(size_t)t * D + d] = qkv[(size_t)t * 3 * D + D + d];
                v[(size_t)t * D + d] = qkv[(size_t)t * 3 * D + 2 * D + d];
            }
        dattn(a, q, k, v, NULL, T, D, H);
        dlin(o, a, P(m, NULL, "%s%d.%s.weight", bp, l, y->out),
             P(m, NULL, "%s%d.%s.bias", bp, l, y->out), T, D, D);
        for (size_t i = 0; i < (size_t)T * D; i++)
            xo[i] += o[i];
        dln(h, xo, P(m, NULL, "%s%d.%s.weight", bp, l, y->norm2),
            P(m, NULL, "%s%d.%s.bias", bp, l, y->norm2), T, D, y->veps);
        dlin(f, h, P(m, NULL, "%s%d.%s.weight", bp, l, y->fc1),
             P(m, NULL, "%s%d.%s.bias", bp, l, y->fc1), T, D, (int)M);
        for (size_t i = 0; i < (size_t)T * M; i++)
            f[i] = dgelu(f[i]);
        dlin(o, f, P(m, NULL, "%s%d.%s.weight", bp, l, y->fc2),
             P(m, NULL, "%s%d.%s.bias", bp, l, y->fc2), T, (int)M, D);
        for (size_t i = 0; i < (size_t)T * D; i++)
            xo[i] += o[i];
    }
    dln(h, hidden[L], P(m, NULL, "%s.weight", y->norm), P(m, NULL, "%s.bias", y->norm), 1, D,
        y->veps);
    dlin(emb, h, P(m, NULL, "%s", y->vproj), y->vproj_b ? P(m, NULL, "%s", y->vproj_b) : NULL, 1,
         D, E);
    dnormalize(emb, E);
    free(h), free(qkv), free(q), free(k), free(v), free(a), free(o), free(f);
}

/* One text (L tokens) through BERT: hidden[l] [L, D], emb [E]. */
static void ref_bert(const enc_model *m, const layout *y, const int32_t *ids,
                     const int32_t *mask, int Lt, double **hidden, double *emb)
{
    enc_input_geom g;
    assert_int_equal(enc_model_geom(m, ENC_TEXT, &g), ENC_OK);
    const int D = g.hidden_size, H = g.num_heads, NL = g.num_layers, E = enc_model_embed_dim(m);
    const char *p = y->bert;
    const float *word = P(m, NULL, "%sembeddings.word_embeddings.weight", p);
    const float *pos = P(m, NULL, "%sembeddings.position_embeddings.weight", p);
    const float *type = P(m, NULL, "%sembeddings.token_type_embeddings.weight", p);
    double *x = hidden[0];
    for (int t = 0; t < Lt; t++)
        for (int d = 0; d < D; d++)
            x[(size_t)t * D + d] = (double)word[(size_t)ids[t] * D + d] +
                                   pos[(size_t)t * D + d] + type[d];
    dln(x, x, P(m, NULL, "%sembeddings.LayerNorm.weight", p),
        P(m, NULL, "%sembeddings.LayerNorm.bias", p), Lt, D, 1e-12);
    int64_t I;
    P(m, &I, "%sencoder.layer.0.intermediate.dense.weight", p);
    double *q = malloc((size_t)Lt * D * 8), *k = malloc((size_t)Lt * D * 8);
    double *v = malloc((size_t)Lt * D * 8), *a = malloc((size_t)Lt * D * 8);
    double *o = malloc((size_t)Lt * D * 8), *f = malloc((size_t)Lt * I * 8);
    for (int l = 0; l < NL; l++) {
        double *xo = hidden[l + 1];
        memcpy(xo, hidden[l], (size_t)Lt * D * sizeof(double));
#define BP(s) P(m, NULL, "%sencoder.layer.%d." s, p, l)
        dlin(q, xo, BP("attention.self.query.weight"), BP("attention.self.query.bias"), Lt, D, D);
        dlin(k, xo, BP("attention.self.key.weight"), BP("attention.self.key.bias"), Lt, D, D);
        dlin(v, xo, BP("attention.self.value.weight"), BP("attention.self.value.bias"), Lt, D, D);
        dattn(a, q, k, v, mask, Lt, D, H);
        dlin(o, a, BP("attention.output.dense.weight"), BP("attention.output.dense.bias"), Lt, D,
             D);
        for (size_t i = 0; i < (size_t)Lt * D; i++)
            xo[i] += o[i];
        dln(xo, xo, BP("attention.output.LayerNorm.weight"), BP("attention.output.LayerNorm.bias"),
            Lt, D, 1e-12);
        dlin(f, xo, BP("intermediate.dense.weight"), BP("intermediate.dense.bias"), Lt, D, (int)I);
        for (size_t i = 0; i < (size_t)Lt * I; i++)
            f[i] = dgelu(f[i]);
        dlin(o, f, BP("output.dense.weight"), BP("output.dense.bias"), Lt, (int)I, D);
        for (size_t i = 0; i < (size_t)Lt * D; i++)
            xo[i] += o[i];
        dln(xo, xo, BP("output.LayerNorm.weight"), BP("output.LayerNorm.bias"), Lt, D, 1e-12);
#undef BP
    }
    double *cls = hidden[NL];
    if (y->tproj2 == NULL) {
        dlin(emb, cls, P(m, NULL, "%s", y->tproj), y->tproj_b ? P(m, NULL, "%s", y->tproj_b) : NULL,
             1, D, E);
    } else {
        int64_t hid;
        const float *w1 = P(m, &hid, "%s", y->tproj);
        double *t1 = malloc((size_t)hid * 8);
        dlin(t1, cls, w1, NULL, 1, D, (int)hid);
        for (int j = 0; j < hid; j++)
            t1[j] = dgelu(t1[j]);
        dlin(emb, t1, P(m, NULL, "%s", y->tproj2), NULL, 1, (int)hid, E);
        free(t1);
    }
    dnormalize(emb, E);
    free(q), free(k), free(v), free(a), free(o), free(f);
}

/* hidden[l] of element b of the state vs the reference; returns max diff. */
static double cmp_hidden(const enc_state *s, int l, int b, const double *ref, size_t n)
{
    const float *got = enc_state_hidden(s, l);
    assert_non_null(got);
    got += (size_t)b * n;
    double m = 0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs(got[i] - ref[i]));
    return m;
}

static void check_random_vision(const enc_model *m, const layout *y, enc_kind kind, tu_rng *r)
{
    enc_input_geom g;
    assert_int_equal(enc_model_geom(m, kind, &g), ENC_OK);
    const int B = 3, E = enc_model_embed_dim(m), T = g.tokens, D = g.hidden_size;
    size_t img = (size_t)g.channels * g.size[0] * g.size[1] * g.size[2];
    float *in = malloc(B * img * sizeof(float)), *emb = malloc((size_t)B * E * sizeof(float));
    tu_fill_normal(r, in, B * img);
    enc_state_opts so = {.flags = ENC_STATE_HIDDEN};
    enc_state *s;
    char err[256];
    assert_int_equal(enc_state_new(m, kind, B, &so, &s, err, sizeof err), ENC_OK);
    int rc = kind == ENC_IMAGE ? enc_encode_image(s, in, B, emb) : enc_encode_volume(s, in, B, emb);
    assert_int_equal(rc, ENC_OK);
    assert_int_equal(enc_state_tokens(s), T);
    double **hid = malloc((size_t)(g.num_layers + 1) * sizeof *hid), *re = malloc(E * 8);
    for (int l = 0; l <= g.num_layers; l++)
        hid[l] = malloc((size_t)T * D * 8);
    double worst_h = 0, worst_e = 0;
    for (int b = 0; b < B; b++) {
        ref_vit(m, y, kind == ENC_VOLUME, in + b * img, hid, re);
        for (int l = 0; l <= g.num_layers; l++)
            worst_h = fmax(worst_h, cmp_hidden(s, l, b, hid[l], (size_t)T * D));
        for (int j = 0; j < E; j++)
            worst_e = fmax(worst_e, fabs(emb[(size_t)b * E + j] - re[j]));
    }
    printf("  random %-10s %-6s hidden %.1e embed %.1e\n", enc_model_arch(m),
           kind == ENC_IMAGE ? "image" : "volume", worst_h, worst_e);
    assert_true(worst_h <= 1e-4);
    assert_true(worst_e <= 1e-5);
    for (int l = 0; l <= g.num_layers; l++)
        free(hid[l]);
    free(hid), free(re), free(in), free(emb);
    enc_state_free(s);
}

static void check_random_text(const enc_model *m, const layout *y, tu_rng *r)
{
    enc_input_geom g;
    assert_int_equal(enc_model_geom(m, ENC_TEXT, &g), ENC_OK);
    const int B = 3, E = enc_model_embed_dim(m), D = g.hidden_size, L = g.tokens;
    int32_t *ids = malloc((size_t)B * L * 4), *mask = malloc((size_t)B * L * 4);
    for (int b = 0; b < B; b++) {
        int len = b == 0 ? L : b == 1 ? 3 : 1 + L / 2; /* full, short, half */
        for (int t = 0; t < L; t++) {
            ids[b * L + t] = t < len ? (int32_t)tu_rng_below(r, (uint64_t)g.vocab_size) : 0;
            mask[b * L + t] = t < len;
        }
    }
    float *emb = malloc((size_t)B * E * sizeof(float));
    enc_state_opts so = {.flags = ENC_STATE_HIDDEN};
    enc_state *s;
    char err[256];
    assert_int_equal(enc_state_new(m, ENC_TEXT, B, &so, &s, err, sizeof err), ENC_OK);
    assert_int_equal(enc_encode_text(s, ids, mask, B, L, emb), ENC_OK);
    double **hid = malloc((size_t)(g.num_layers + 1) * sizeof *hid), *re = malloc(E * 8);
    for (int l = 0; l <= g.num_layers; l++)
        hid[l] = malloc((size_t)L * D * 8);
    double worst_h = 0, worst_e = 0;
    for (int b = 0; b < B; b++) {
        ref_bert(m, y, ids + b * L, mask + b * L, L, hid, re);
        for (int l = 0; l <= g.num_layers; l++)
            worst_h = fmax(worst_h, cmp_hidden(s, l, b, hid[l], (size_t)L * D));
        for (int j = 0; j < E; j++)
            worst_e = fmax(worst_e, fabs(emb[(size_t)b * E + j] - re[j]));
    }
    printf("  random %-10s text   hidden %.1e embed %.1e\n", enc_model_arch(m), worst_h, worst_e);
    assert_true(worst_h <= 1e-4);
    assert_true(worst_e <= 1e-5);
    for (int l = 0; l <= g.num_layers; l++)
        free(hid[l]);
    free(hid), free(re), free(ids), free(mask), free(emb);
    enc_state_free(s);
}

static void run_random(const layout *y, const char *arch)
{
    enc_model *m;
    char err[512] = "";
    int rc = enc_model_new_random(y->cfg, 7, NULL, &m, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, ENC_OK);
    assert_string_equal(enc_model_arch(m), arch);
    assert_int_equal(strlen(enc_model_id(m)), 64);
    tu_rng r;
    tu_rng_seed(&r, 99);
    if (enc_model_has(m, ENC_IMAGE))
        check_random_vision(m, y, ENC_IMAGE, &r);
    if (enc_model_has(m, ENC_VOLUME))
        check_random_vision(m, y, ENC_VOLUME, &r);
    if (enc_model_has(m, ENC_TEXT))
        check_random_text(m, y, &r);
    enc_model_free(m);
}

static void test_random_medsem(void **state)
{
    (void)state;
    run_random(&medsem_layout, "medsem");
}

static void test_random_m3d(void **state)
{
    (void)state;
    run_random(&m3d_layout, "m3d-clip");
}

static void test_random_biomedclip(void **state)
{
    (void)state;
    run_random(&biomedclip_layout, "biomedclip");
}

/* ---- model directories ---------------------------------------------------------------- */

enum { DROP_NONE = -1 };

/* Writes m's parameters to dir/model.safetensors and config to
 * dir/config.json.  Parameter drop is left out; parameter reshape gets its
 * first dimension + 1 (and matching data). */
static void write_model_dir(const enc_model *m, const char *dir, const char *config, long drop,
                            long reshape)
{
    size_t n = enc_model_param_count(m), k = 0;
    const char **names = calloc(n, sizeof *names);
    int *ranks = calloc(n, sizeof *ranks);
    int64_t(*shapes)[ENC_ST_MAX_RANK] = calloc(n, sizeof *shapes);
    const float **data = calloc(n, sizeof *data);
    float *big = NULL;
    for (size_t i = 0; i < n; i++) {
        enc_param p;
        enc_model_param(m, i, &p);
        if ((long)i == drop)
            continue;
        names[k] = p.name;
        ranks[k] = p.rank;
        memcpy(shapes[k], p.shape, sizeof shapes[k]);
        data[k] = p.data;
        if ((long)i == reshape) {
            size_t row = p.count / (size_t)p.shape[0];
            shapes[k][0]++;
            big = calloc(p.count + row, sizeof(float));
            memcpy(big, p.data, p.count * sizeof(float));
            data[k] = big;
        }
        k++;
    }
    char *path = tu_path(dir, "model.safetensors"), err[256];
    int rc = enc_st_write(path, k, names, ranks, (const int64_t(*)[ENC_ST_MAX_RANK])shapes, data,
                          err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, ENC_OK);
    free(path);
    path = tu_path(dir, "config.json");
    write_all(path, config);
    free(path);
    free(names), free(ranks), free(shapes), free(data), free(big);
}

/* The index of parameter name in m. */
static long param_index(const enc_model *m, const char *name)
{
    for (size_t i = 0; i < enc_model_param_count(m); i++) {
        enc_param p;
        enc_model_param(m, i, &p);
        if (strcmp(p.name, name) == 0)
            return (long)i;
    }
    fail_msg("no parameter %s", name);
    return -1;
}

static void test_dir_roundtrip(void **state)
{
    (void)state;
    enc_model *m, *m2;
    char err[512];
    assert_int_equal(enc_model_new_random(medsem_layout.cfg, 3, NULL, &m, err, sizeof err),
                     ENC_OK);
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    write_model_dir(m, dir, medsem_layout.cfg, DROP_NONE, DROP_NONE);
    int rc = enc_model_load(dir, NULL, &m2, err, sizeof err);
    if (rc)
        print_error("%s\n", err);
    assert_int_equal(rc, ENC_OK);
    assert_int_equal(enc_model_param_count(m), enc_model_param_count(m2));
    assert_true(fabsf(enc_model_logit_scale(m2) - 2.5f) < 1e-6f);
    /* the same numbers, bit for bit */
    enc_input_geom g;
    assert_int_equal(enc_model_geom(m, ENC_VOLUME, &g), ENC_OK);
    size_t n = (size_t)2 * g.channels * g.size[0] * g.size[1] * g.size[2];
    float *in = malloc(n * sizeof(float)), e1[24], e2[24];
    tu_rng r;
    tu_rng_seed(&r, 5);
    tu_fill_normal(&r, in, n);
    enc_state *s1, *s2;
    assert_int_equal(enc_state_new(m, ENC_VOLUME, 2, NULL, &s1, err, sizeof err), ENC_OK);
    assert_int_equal(enc_state_new(m2, ENC_VOLUME, 2, NULL, &s2, err, sizeof err), ENC_OK);
    assert_int_equal(enc_encode_volume(s1, in, 2, e1), ENC_OK);
    assert_int_equal(enc_encode_volume(s2, in, 2, e2), ENC_OK);
    assert_memory_equal(e1, e2, 2 * 12 * sizeof(float));
    /* the id is the file's SHA-256 */
    char *stp = tu_path(dir, "model.safetensors");
    size_t len;
    char *bytes = read_all(stp, &len);
    uint8_t h[UTIL_SHA256_SIZE];
    char hex[2 * UTIL_SHA256_SIZE + 1];
    util_sha256(bytes, len, h);
    util_sha256_hex(h, hex);
    assert_string_equal(enc_model_id(m2), hex);
    assert_string_not_equal(enc_model_id(m), enc_model_id(m2));
    enc_model *m3;
    enc_model_opts no_id = {.nthreads = 1, .no_id = 1};
    assert_int_equal(enc_model_load(dir, &no_id, &m3, err, sizeof err), ENC_OK);
    assert_string_equal(enc_model_id(m3), "");
    enc_model_free(m3);
    free(bytes), free(stp), free(in);
    enc_state_free(s1);
    enc_state_free(s2);
    enc_model_free(m2);
    enc_model_free(m);
    assert_int_equal(tu_rmtree(dir), 0);
    free(dir);
}

/* Loading dir must fail with code, and the message must contain needle. */
static void expect_load_error(const char *dir, int code, const char *needle)
{
    enc_model *m = (enc_model *)(uintptr_t)1;
    char err[512] = "";
    int rc = enc_model_load(dir, NULL, &m, err, sizeof err);
    if (rc != code || strstr(err, needle) == NULL)
        print_error("got %s \"%s\", want %s mentioning \"%s\"\n", enc_errname(rc), err,
                    enc_errname(code), needle);
    assert_int_equal(rc, code);
    assert_non_null(strstr(err, needle));
    assert_ptr_equal(m, (enc_model *)(uintptr_t)1); /* untouched on failure */
}

/* From a fixture model when there is one (else a random medsem model): the
 * same directory with one tensor removed, then with one reshaped. */
static void broken_dirs(const enc_model *m, const char *config, const char *victim)
{
    char *dir = tu_mkdtemp();
    assert_non_null(dir);
    long i = param_index(m, victim);
    write_model_dir(m, dir, config, i, DROP_NONE);
    expect_load_error(dir, ENC_MISSING, victim);
    write_model_dir(m, dir, config, DROP_NONE, i);
    expect_load_error(dir, ENC_SHAPE, victim);
    assert_int_equal(tu_rmtree(dir), 0);
    free(dir);
}

static void test_broken_tensors(void **state)
{
    (void)state;
    static const struct {
        const char *arch, *victim, *victim2;
    } cases[] = {
        {"medsem", "vision.blocks.1.mlp.fc2.weight", "text.encoder.layer.0.attention.self.key.bias"},
        {"m3d-clip", "vision_encoder.patch_embedding.patch_embeddings.1.weight",
         "mm_language_proj.bias"},
        {"biomedclip", "visual.trunk.pos_embed", "text.proj.2.weight"},
    };
    char err[512];
    for (size_t c = 0; c < 3; c++) {
        char *fd = fixture_dir(cases[c].arch);
        enc_model *m;
        char *config;
        if (fd != NULL) {
            assert_int_equal(enc_model_load(fd, NULL, &m, err, sizeof err), ENC_OK);
            char *cp = tu_path(fd, "config.json");
            config = read_all(cp, NULL);
            free(cp);
        } else {
            const layout *y = c == 0 ? &medsem_layout : c == 1 ? &m3d_layout : &biomedclip_layout;
            assert_int_equal(enc_model_new_random(y->cfg, 1, NULL, &m, err, sizeof err), ENC_OK);
            config = strdup(y->cfg);
        }
        broken_dirs(m, config, cases[c].victim);
        broken_dirs(m, config, cases[c].victim2);
        enc_model_free(m);
        free(config);
        free(fd);
    }
    /* colipri: an EVA weight, a pooling weight */
    char *fd = fixture_dir("colipri");
    if (fd != NULL) {
        enc_model *m;
        assert_int_equal(enc_model_load(fd, NULL, &m, err, sizeof err), ENC_OK);
        char *cp = tu_path(fd, "config.json");
        char *config = read_all(cp, NULL);
        broken_dirs(m, config, "image_encoder.backbone.eva.blocks.1.mlp.fc1_x.weight");
        broken_dirs(m, config, "text_encoder.pooler.attn.in_proj_weight");
        enc_model_free(m);
        free(config);
        free(cp);
        free(fd);
    }
}

static void test_config_errors(void **state)
{
    (void)state;
    static const struct {
        const char *cfg;
        int code;
        const char *needle;
    } cases[] = {
        {"[1, 2]", ENC_FORMAT, "not a JSON object"},
        {"{\"embed_dim\": 4", ENC_FORMAT, "not a JSON object"},
        {"{}", ENC_MISSING, "architecture"},
        {"{\"architecture\": \"clip\"}", ENC_UNSUPPORTED, "clip"},
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8}", ENC_MISSING, "neither"},
        {"{\"architecture\": \"medsem\", \"vision\": {}}", ENC_MISSING, "embed_dim"},
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8, \"vision\": {\"hidden_size\": 8}}",
         ENC_MISSING, "vision.num_layers"},
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8, \"vision\": {\"hidden_size\": 10,"
         "\"num_layers\": 1, \"num_heads\": 4, \"mlp_dim\": 8, \"image_size\": [8, 8],"
         "\"patch_size\": [4, 4]}}",
         ENC_INVAL, "heads"},
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8, \"vision\": {\"hidden_size\": 8,"
         "\"num_layers\": 1, \"num_heads\": 4, \"mlp_dim\": 8, \"image_size\": [8, 9],"
         "\"patch_size\": [4, 4]}}",
         ENC_INVAL, "not a multiple of the patch size"},
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8, \"vision\": {\"hidden_size\": 8,"
         "\"num_layers\": 1, \"num_heads\": 4, \"mlp_dim\": 8, \"image_size\": [8],"
         "\"patch_size\": [4, 4]}}",
         ENC_INVAL, "vision.image_size"},
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8, \"vision\": {\"hidden_size\": -8,"
         "\"num_layers\": 1, \"num_heads\": 4, \"mlp_dim\": 8}}",
         ENC_INVAL, "vision.hidden_size"},
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8, \"text\": {\"vocab_size\": 9,"
         "\"hidden_size\": 8, \"num_layers\": 1, \"num_heads\": 2, \"intermediate_size\": 8,"
         "\"max_position_embeddings\": 4, \"max_len\": 5}}",
         ENC_INVAL, "position embeddings"},
        /* the stem: its total stride must divide the patch; odd kernels; lists */
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8, \"vision\": {\"hidden_size\": 8,"
         "\"num_layers\": 1, \"num_heads\": 4, \"mlp_dim\": 8, \"image_size\": [8, 8],"
         "\"patch_size\": [4, 4], \"volume_size\": [4, 8, 8], \"volume_patch_size\": [2, 4, 4],"
         "\"stem_channels\": [4, 4]}}",
         ENC_INVAL, "vision.volume_patch_size patch side 2 is not a multiple of the stem's total stride 4"},
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8, \"vision\": {\"hidden_size\": 8,"
         "\"num_layers\": 1, \"num_heads\": 4, \"mlp_dim\": 8, \"image_size\": [8, 8],"
         "\"patch_size\": [4, 4], \"stem_channels\": [4], \"stem_kernel\": 2}}",
         ENC_INVAL, "vision.stem_kernel: 2 is not an odd size"},
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8, \"vision\": {\"hidden_size\": 8,"
         "\"num_layers\": 1, \"num_heads\": 4, \"mlp_dim\": 8, \"image_size\": [8, 8],"
         "\"patch_size\": [4, 4], \"stem_channels\": 4}}",
         ENC_INVAL, "vision.stem_channels: expected an array"},
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8, \"vision\": {\"hidden_size\": 8,"
         "\"num_layers\": 1, \"num_heads\": 4, \"mlp_dim\": 8, \"image_size\": [8, 8],"
         "\"patch_size\": [4, 4], \"stem_channels\": [4, 0]}}",
         ENC_INVAL, "vision.stem_channels[1]"},
        {"{\"architecture\": \"medsem\", \"embed_dim\": 8, \"vision\": {\"hidden_size\": 8,"
         "\"num_layers\": 1, \"num_heads\": 4, \"mlp_dim\": 8, \"image_size\": [8, 8],"
         "\"patch_size\": [4, 4], \"stem_channels\": [4, 4, 4]}}",
         ENC_INVAL, "patch side 4 is not a multiple of the stem's total stride 8"},
        {"{\"model_type\": \"m3d_clip\", \"hidden_size\": 8, \"num_layers\": 1,"
         "\"num_heads\": 2, \"mlp_dim\": 8, \"img_size\": [4, 4, 4], \"patch_size\": [2, 2, 2],"
         "\"pos_embed\": \"fourier\"}",
         ENC_UNSUPPORTED, "fourier"},
        {"{\"model_type\": \"m3d_clip\", \"hidden_size\": 8, \"num_layers\": 1,"
         "\"num_heads\": 2, \"mlp_dim\": 8, \"patch_size\": [2, 2, 2]}",
         ENC_MISSING, "img_size"},
        {"{\"architecture\": \"biomedclip\", \"model_cfg\": {\"vision_cfg\":"
         "{\"timm_model_name\": \"vit_huge_patch14_224\"}}}",
         ENC_UNSUPPORTED, "vit_huge"},
        {"{\"architecture\": \"biomedclip\", \"model_cfg\": {\"text_cfg\":"
         "{\"hf_proj_type\": \"pooler\"}}}",
         ENC_UNSUPPORTED, "pooler"},
        /* colipri: the package's keys; what medsem does not implement is named */
        {"{\"architecture\": \"colipri\", \"model\": {}}", ENC_MISSING, "projection_dim"},
        {"{\"architecture\": \"colipri\", \"projection_dim\": 12, \"model\": {}}",
         ENC_MISSING, "model.image_encoder and model.text_encoder"},
        {"{\"architecture\": \"colipri\", \"projection_dim\": 12, \"model\": {\"image_encoder\":"
         "{\"backbone\": {\"embed_dim\": 24, \"eva_depth\": 1, \"eva_numheads\": 2,"
         "\"input_shape\": [8, 8, 8], \"patch_embed_size\": [4, 4, 4]}}}}",
         ENC_UNSUPPORTED, "use_abs_pos_embed"},
        {"{\"architecture\": \"colipri\", \"projection_dim\": 12, \"model\": {\"image_encoder\":"
         "{\"backbone\": {\"embed_dim\": 24, \"eva_depth\": 1, \"eva_numheads\": 2,"
         "\"use_abs_pos_embed\": false, \"num_register_tokens\": 4,"
         "\"input_shape\": [8, 8, 8], \"patch_embed_size\": [4, 4, 4]}}}}",
         ENC_UNSUPPORTED, "num_register_tokens"},
        {"{\"architecture\": \"colipri\", \"projection_dim\": 12, \"model\": {\"image_encoder\":"
         "{\"backbone\": {\"embed_dim\": 32, \"eva_depth\": 1, \"eva_numheads\": 2,"
         "\"use_abs_pos_embed\": false, \"input_shape\": [8, 8, 8],"
         "\"patch_embed_size\": [4, 4, 4]}}}}",
         ENC_INVAL, "head size 16 is not a multiple of 6"},
        {"{\"architecture\": \"colipri\", \"projection_dim\": 12, \"model\": {\"image_encoder\":"
         "{\"backbone\": {\"embed_dim\": 24, \"eva_depth\": 1, \"eva_numheads\": 2,"
         "\"use_abs_pos_embed\": false, \"input_shape\": [8, 8, 8],"
         "\"patch_embed_size\": [4, 4, 4]}, \"pooler\": {\"num_heads\": 5}}}}",
         ENC_INVAL, "model.image_encoder.pooler.embed_dim 12 / num_heads 5"},
        {"{\"architecture\": \"colipri\", \"projection_dim\": 12, \"model\": {\"image_encoder\":"
         "{\"backbone\": {\"embed_dim\": 24, \"eva_depth\": 1, \"eva_numheads\": 2,"
         "\"use_abs_pos_embed\": false, \"input_shape\": [8, 8, 8],"
         "\"patch_embed_size\": [4, 4, 4]}, \"projector\": {\"kernel_size\": 3}}}}",
         ENC_UNSUPPORTED, "1x1x1 Conv3d"},
        {"{\"architecture\": \"colipri\", \"projection_dim\": 12, \"model\": {\"text_encoder\":"
         "{\"backbone\": {\"hidden_size\": 16}, \"pooler\": {\"num_heads\": 2}}}}",
         ENC_INVAL, "model.text_encoder.backbone.hidden_size 16 differs from projection_dim 12"},
        {"{\"architecture\": \"colipri\", \"projection_dim\": 12, \"model\": {\"text_encoder\":"
         "{\"backbone\": {}}}}",
         ENC_MISSING, "model.text_encoder.pooler: missing"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        enc_model *m = NULL;
        char err[512] = "";
        int rc = enc_model_new_random(cases[i].cfg, 1, NULL, &m, err, sizeof err);
        if (rc != cases[i].code || strstr(err, cases[i].needle) == NULL)
            print_error("case %zu: got %s \"%s\", want %s with \"%s\"\n", i, enc_errname(rc), err,
                        enc_errname(cases[i].code), cases[i].needle);
        assert_int_equal(rc, cases[i].code);
        assert_non_null(strstr(err, cases[i].needle));
        assert_null(m);
    }
    /* directories: no config, no weights */
    char *dir = tu_mkdtemp();
    expect_load_error(dir, ENC_IO, "config.json");
    char *cp = tu_path(dir, "config.json");
    write_all(cp, medsem_layout.cfg);
    expect_load_error(dir, ENC_IO, "model.safetensors");
    free(cp);
    assert_int_equal(tu_rmtree(dir), 0);
    free(dir);
    enc_model_free(NULL);
}

/* Layout options no fixture uses: the parameters they name exist, and
 * encoding gives unit vectors. */
static void test_layout_variants(void **state)
{
    (void)state;
    static const struct {
        const char *cfg, *names[3];
    } cases[] = {
        {"{\"architecture\":\"biomedclip\",\"model_cfg\":{\"embed_dim\":6,"
         "\"vision_cfg\":{\"timm_proj\":\"mlp\",\"timm_proj_bias\":true,\"image_size\":8,"
         "\"patch_size\":4,\"width\":8,\"layers\":1,\"heads\":2},"
         "\"text_cfg\":{\"proj\":\"linear\",\"context_length\":4,\"vocab_size\":9,"
         "\"hidden_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
         "\"intermediate_size\":8,\"max_position_embeddings\":6}}}",
         {"visual.head.mlp.fc1.bias", "visual.head.mlp.fc2.bias", "text.proj.weight"}},
        {"{\"model_type\":\"m3d_clip\",\"img_size\":[4,4,4],\"patch_size\":[2,2,2],"
         "\"hidden_size\":8,\"mlp_dim\":8,\"num_layers\":1,\"num_heads\":2,"
         "\"vocab_size\":9,\"max_text_len\":4,\"pos_embed\":\"conv\"}",
         {"vision_encoder.patch_embedding.patch_embeddings.weight",
          "language_encoder.embeddings.position_embeddings.weight", "mm_vision_proj.bias"}},
        {"{\"architecture\":\"biomedclip\",\"model_cfg\":{\"vision_cfg\":"
         "{\"timm_model_name\":\"vit_tiny_patch16_224\",\"layers\":1}}}",
         {"visual.trunk.pos_embed", "visual.trunk.blocks.0.attn.qkv.bias",
          "visual.head.proj.weight"}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        enc_model *m;
        char err[512] = "";
        int rc = enc_model_new_random(cases[c].cfg, 4, NULL, &m, err, sizeof err);
        if (rc)
            print_error("case %zu: %s\n", c, err);
        assert_int_equal(rc, ENC_OK);
        for (int i = 0; i < 3; i++)
            assert_true(param_index(m, cases[c].names[i]) >= 0);
        for (int k = 0; k < 3; k++) {
            enc_input_geom g;
            if (enc_model_geom(m, (enc_kind)k, &g) != ENC_OK)
                continue;
            enc_state *s;
            assert_int_equal(enc_state_new(m, (enc_kind)k, 1, NULL, &s, err, sizeof err), ENC_OK);
            float out[512];
            assert_true(enc_model_embed_dim(m) <= 512);
            if (k == ENC_TEXT) {
                int32_t ids[4] = {2, 5, 7, 3};
                rc = enc_encode_text(s, ids, NULL, 1, 4, out);
            } else {
                size_t n = (size_t)g.channels * g.size[0] * g.size[1] * g.size[2];
                float *in = malloc(n * sizeof(float));
                for (size_t i = 0; i < n; i++)
                    in[i] = (float)((i * 37) % 11) - 5.0f;
                rc = k == ENC_IMAGE ? enc_encode_image(s, in, 1, out)
                                    : enc_encode_volume(s, in, 1, out);
                free(in);
            }
            assert_int_equal(rc, ENC_OK);
            double ss = 0;
            for (int j = 0; j < enc_model_embed_dim(m); j++)
                ss += (double)out[j] * out[j];
            assert_true(fabs(ss - 1) < 1e-5);
            enc_state_free(s);
        }
        if (c == 2) { /* ViT-Ti/16 sizes from the name: 192 wide, 3 heads, 224 / 16 */
            enc_input_geom g;
            assert_int_equal(enc_model_geom(m, ENC_IMAGE, &g), ENC_OK);
            assert_int_equal(g.hidden_size, 192);
            assert_int_equal(g.num_heads, 3);
            assert_int_equal(g.num_layers, 1);
            assert_int_equal(g.tokens, 1 + 14 * 14);
            assert_int_equal(g.channels, 3);
            assert_int_equal(enc_model_embed_dim(m), 512);
        }
        enc_model_free(m);
    }
}

/* ---- the state API ---------------------------------------------------------------------- */

static void test_state_api(void **state)
{
    (void)state;
    enc_model *m;
    char err[512];
    assert_int_equal(enc_model_new_random(medsem_layout.cfg, 11, NULL, &m, err, sizeof err),
                     ENC_OK);
    assert_int_equal(enc_model_embed_dim(m), 12);
    assert_true(enc_model_has(m, ENC_IMAGE) && enc_model_has(m, ENC_VOLUME) &&
                enc_model_has(m, ENC_TEXT));
    enc_input_geom g;
    assert_int_equal(enc_model_geom(m, ENC_IMAGE, &g), ENC_OK);
    assert_int_equal(g.channels, 2);
    assert_int_equal(g.size[0], 1), assert_int_equal(g.size[1], 12), assert_int_equal(g.size[2], 16);
    assert_int_equal(g.patch[1], 4);
    assert_int_equal(g.tokens, 1 + 3 * 4);
    assert_int_equal(enc_model_geom(m, ENC_TEXT, &g), ENC_OK);
    assert_int_equal(g.tokens, 10);
    assert_int_equal(g.vocab_size, 50);

    enc_state *s = NULL;
    assert_int_equal(enc_state_new(m, ENC_TEXT, 0, NULL, &s, err, sizeof err), ENC_INVAL);
    enc_state_opts bad = {.max_len = 15};
    assert_int_equal(enc_state_new(m, ENC_TEXT, 1, &bad, &s, err, sizeof err), ENC_INVAL);
    assert_null(s);
    enc_state_opts so = {.flags = ENC_STATE_PROBS, .max_len = 6};
    assert_int_equal(enc_state_new(m, ENC_TEXT, 4, &so, &s, err, sizeof err), ENC_OK);
    assert_true(enc_state_bytes(s) > 0);
    assert_null(enc_state_hidden(s, 2)); /* nothing encoded yet */
    int32_t ids[4 * 6], mask[4 * 6];
    for (int i = 0; i < 24; i++)
        ids[i] = (i * 7) % 50, mask[i] = i % 6 < 4;
    float out[4 * 12], one[12], img[2];
    /* bounds and kinds */
    assert_int_equal(enc_encode_text(s, ids, mask, 5, 6, out), ENC_INVAL);
    assert_non_null(strstr(enc_state_errmsg(s), "batch"));
    assert_int_equal(enc_encode_text(s, ids, mask, 4, 7, out), ENC_INVAL);
    assert_non_null(strstr(enc_state_errmsg(s), "length"));
    assert_int_equal(enc_encode_image(s, img, 1, out), ENC_INVAL);
    assert_non_null(strstr(enc_state_errmsg(s), "text"));
    ids[5] = 50;
    assert_int_equal(enc_encode_text(s, ids, mask, 4, 6, out), ENC_INVAL);
    assert_non_null(strstr(enc_state_errmsg(s), "vocabulary"));
    ids[5] = -1;
    assert_int_equal(enc_encode_text(s, ids, mask, 4, 6, out), ENC_INVAL);
    ids[5] = 3;
    /* a batch equals its items one at a time; padding ids do not matter */
    assert_int_equal(enc_encode_text(s, ids, mask, 4, 6, out), ENC_OK);
    assert_string_equal(enc_state_errmsg(s), "");
    assert_int_equal(enc_state_batch(s), 4);
    assert_int_equal(enc_state_tokens(s), 6);
    for (int b = 0; b < 4; b++) {
        int32_t pid[6];
        memcpy(pid, ids + b * 6, sizeof pid);
        pid[4] = 1, pid[5] = 49; /* the padded positions */
        assert_int_equal(enc_encode_text(s, pid, mask + b * 6, 1, 6, one), ENC_OK);
        for (int j = 0; j < 12; j++)
            assert_true(fabsf(one[j] - out[b * 12 + j]) <= 1e-6f);
    }
    /* unit vectors */
    for (int b = 0; b < 4; b++) {
        double ss = 0;
        for (int j = 0; j < 12; j++)
            ss += (double)out[b * 12 + j] * out[b * 12 + j];
        assert_true(fabs(ss - 1) < 1e-5);
    }
    /* probabilities: rows sum to 1, padded keys get 0; no hidden but the last */
    assert_int_equal(enc_encode_text(s, ids, mask, 2, 6, out), ENC_OK);
    const float *pr = enc_state_probs(s, 1);
    assert_non_null(pr);
    assert_null(enc_state_probs(s, 2));
    for (int row = 0; row < 2 * 3 * 6; row++) {
        double sum = 0;
        for (int j = 0; j < 6; j++)
            sum += pr[row * 6 + j];
        assert_true(fabs(sum - 1) < 1e-5);
        assert_true(pr[row * 6 + 4] == 0.0f && pr[row * 6 + 5] == 0.0f);
    }
    assert_null(enc_state_hidden(s, 0));
    assert_non_null(enc_state_hidden(s, 2));
    /* mask NULL = all tokens */
    assert_int_equal(enc_encode_text(s, ids, NULL, 1, 6, out), ENC_OK);
    enc_state_free(s);
    enc_state_free(NULL);

    /* a volume state refuses images */
    assert_int_equal(enc_state_new(m, ENC_VOLUME, 1, NULL, &s, err, sizeof err), ENC_OK);
    assert_int_equal(enc_encode_image(s, img, 1, out), ENC_INVAL);
    enc_state_free(s);
    enc_model_free(m);

    /* m3d-clip has no 2D encoder */
    assert_int_equal(enc_model_new_random(m3d_layout.cfg, 1, NULL, &m, err, sizeof err), ENC_OK);
    assert_int_equal(enc_model_has(m, ENC_IMAGE), 0);
    assert_int_equal(enc_model_geom(m, ENC_IMAGE, &g), ENC_UNSUPPORTED);
    assert_int_equal(enc_state_new(m, ENC_IMAGE, 1, NULL, &s, err, sizeof err), ENC_UNSUPPORTED);
    assert_non_null(strstr(err, "image"));
    enc_model_free(m);
}

/* Two workers share one model, each with its own state. */
typedef struct worker {
    const enc_model *m;
    const float *in;
    float out[2 * 12];
    int rc;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    enc_state *s;
    w->rc = enc_state_new(w->m, ENC_IMAGE, 2, NULL, &s, NULL, 0);
    for (int i = 0; w->rc == ENC_OK && i < 20; i++)
        w->rc = enc_encode_image(s, w->in, 2, w->out);
    enc_state_free(s);
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    enc_model *m;
    char err[512];
    enc_model_opts mo = {.nthreads = 1};
    assert_int_equal(enc_model_new_random(medsem_layout.cfg, 2, &mo, &m, err, sizeof err),
                     ENC_OK);
    enc_input_geom g;
    enc_model_geom(m, ENC_IMAGE, &g);
    size_t n = (size_t)2 * g.channels * g.size[1] * g.size[2];
    float *in = malloc(n * sizeof(float));
    tu_rng r;
    tu_rng_seed(&r, 8);
    tu_fill_normal(&r, in, n);
    worker w[2] = {{m, in, {0}, -1}, {m, in, {0}, -1}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, work, &w[i]), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(w[0].rc, ENC_OK);
    assert_int_equal(w[1].rc, ENC_OK);
    assert_memory_equal(w[0].out, w[1].out, sizeof w[0].out);
    free(in);
    enc_model_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_medsem),
        cmocka_unit_test(test_fixture_medsem_stem),
        cmocka_unit_test(test_fixture_m3d),
        cmocka_unit_test(test_fixture_biomedclip),
        cmocka_unit_test(test_fixture_colipri),
        cmocka_unit_test(test_random_medsem),
        cmocka_unit_test(test_random_m3d),
        cmocka_unit_test(test_random_biomedclip),
        cmocka_unit_test(test_dir_roundtrip),
        cmocka_unit_test(test_broken_tensors),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_layout_variants),
        cmocka_unit_test(test_state_api),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
