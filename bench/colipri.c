/* bench/colipri.c - one COLIPRI volume through the CPU backend: seconds per
 * volume, GFLOP/s and peak memory, and (with --io) the largest difference
 * from PyTorch's outputs.
 *
 *   make bench && bench/colipri [--threads N] [--size S] [--depth L]
 *   bench/colipri --model DIR [--io IO.safetensors] [--threads N]
 *
 * Without --model the model is COLIPRI-CRM's shape (Primus-M: 16 EVA
 * blocks, width 864, 12 heads, SwiGLU 2304, patch 8; projection 768, 12
 * pooling heads) with random weights, on an S^3 volume (default 192:
 * 13,824 tokens); --depth changes the number of blocks (to time a shorter
 * run).  With --model it is that directory's model; --io names a file with
 * volume.input [B, 1, X, Y, Z] (the input, else random) and volume.embed
 * [B, E] and volume.hidden.{l} (compared when present), as
 * tests/fixtures/make_colipri_fixtures.py --full writes; text.input_ids,
 * text.attention_mask, text.hidden.{l} and text.embed there are checked
 * through the text tower the same way.
 * bench/colipri_torch.py runs PyTorch's colipri on the same shapes.
 *
 * GFLOP/s counts the matrix products' multiply-adds twice (patch
 * embedding, q k v, q k^T, p v, output projection, SwiGLU's three, the
 * projector); the element-wise ops and the pool are timed, not counted.
 * Peak memory is the process's maximum resident set (getrusage).
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "encoder/encoder.h"
#include "bench/bench_util.h"

static const char *const config_fmt =
    "{\"architecture\": \"colipri\", \"projection_dim\": 768, \"model\": {\"image_encoder\": "
    "{\"backbone\": {\"embed_dim\": 864, \"eva_depth\": %d, \"eva_numheads\": 12, "
    "\"patch_embed_size\": [8, 8, 8], \"input_shape\": [%d, %d, %d], \"use_rot_pos_emb\": "
    "true, \"use_abs_pos_embed\": false, \"init_values\": 0.1, \"scale_attn_inner\": true, "
    "\"num_register_tokens\": 0}, \"pooler\": {\"embed_dim\": 768, \"num_heads\": 12}}}}";

static double max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m))
            m = d;
    }
    return m;
}

/* io's <kind>.hidden.{l}, l = 0..L, against the state's, where present. */
static void compare_hidden(enc_st *io, const enc_state *s, const char *kind, int L)
{
    for (int l = 0; l <= L; l++) {
        char name[64];
        enc_st_info hi;
        const float *h;
        snprintf(name, sizeof name, "%s.hidden.%d", kind, l);
        if (enc_st_info_get(io, name, &hi) == ENC_OK &&
            enc_st_get(io, name, hi.rank, hi.shape, &h, NULL, 0) == ENC_OK)
            printf("  %s hidden %2d: max abs diff %.2e\n", kind, l,
                   max_abs_diff(enc_state_hidden(s, l), h, hi.nelem));
    }
}

/* The texts of io (text.input_ids, text.attention_mask [B, L] as F32)
 * through the text tower, against text.hidden.{l} and text.embed. */
static int compare_text(const enc_model *m, enc_st *io)
{
    char err[512];
    enc_st_info in;
    const float *idf, *mkf, *want;
    if (enc_st_info_get(io, "text.input_ids", &in) != ENC_OK || in.rank != 2)
        return 0;
    const int B = (int)in.shape[0], L = (int)in.shape[1], E = enc_model_embed_dim(m);
    if (enc_st_get(io, "text.input_ids", 2, in.shape, &idf, err, sizeof err) ||
        enc_st_get(io, "text.attention_mask", 2, in.shape, &mkf, err, sizeof err) ||
        enc_st_get(io, "text.embed", 2, (const int64_t[]){B, E}, &want, err, sizeof err)) {
        fprintf(stderr, "bench/colipri: %s\n", err);
        return 1;
    }
    int32_t *ids = malloc((size_t)B * L * sizeof *ids), *mask = malloc((size_t)B * L * sizeof *mask);
    float *out = malloc((size_t)B * E * sizeof *out);
    enc_state_opts so = {.flags = ENC_STATE_HIDDEN, .max_len = L};
    enc_state *s = NULL;
    int rc = ids && mask && out ? enc_state_new(m, ENC_TEXT, B, &so, &s, err, sizeof err)
                                : ENC_NOMEM;
    for (size_t i = 0; !rc && i < (size_t)B * L; i++)
        ids[i] = (int32_t)idf[i], mask[i] = (int32_t)mkf[i];
    double t0 = bench_now();
    if (!rc && (rc = enc_encode_text(s, ids, mask, B, L, out)))
        snprintf(err, sizeof err, "%s", enc_state_errmsg(s));
    if (!rc) {
        enc_input_geom g;
        enc_model_geom(m, ENC_TEXT, &g);
        printf("  text: %d x %d tokens in %.2f s\n", B, L, bench_now() - t0);
        compare_hidden(io, s, "text", g.num_layers);
        printf("  text embedding: max abs diff %.2e\n", max_abs_diff(out, want, (size_t)B * E));
    } else {
        fprintf(stderr, "bench/colipri: %s\n", err);
    }
    enc_state_free(s);
    free(ids), free(mask), free(out);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    const char *dir = NULL, *iop = NULL;
    int th = 0, S = 192, depth = 16;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            dir = argv[++i];
        else if (!strcmp(argv[i], "--io") && i + 1 < argc)
            iop = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            th = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--size") && i + 1 < argc)
            S = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--depth") && i + 1 < argc)
            depth = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench/colipri [--model DIR [--io IO]] [--threads N] "
                            "[--size S] [--depth L]\n");
            return 2;
        }
    }
    char err[512];
    enc_model *m;
    enc_model_opts mo = {.nthreads = th, .no_id = 1};
    double t0 = bench_now();
    int rc;
    if (dir) {
        rc = enc_model_load(dir, &mo, &m, err, sizeof err);
    } else {
        char cfg[1024];
        snprintf(cfg, sizeof cfg, config_fmt, depth, S, S, S);
        rc = enc_model_new_random(cfg, 1, &mo, &m, err, sizeof err);
    }
    if (rc) {
        fprintf(stderr, "bench/colipri: %s\n", err);
        return 1;
    }
    double tload = bench_now() - t0;
    enc_input_geom g;
    if (enc_model_geom(m, ENC_VOLUME, &g)) {
        fprintf(stderr, "bench/colipri: the model has no volume encoder\n");
        return 1;
    }
    const int E = enc_model_embed_dim(m), T = g.tokens, D = g.hidden_size, L = g.num_layers;
    const double M = floor(D * (8.0 / 3.0)), K = (double)g.channels * g.patch[0] * g.patch[1] *
                                                   g.patch[2];
    size_t in_n = (size_t)g.channels * g.size[0] * g.size[1] * g.size[2];
    enc_st *io = NULL;
    const float *x = NULL, *want = NULL;
    int B = 1;
    if (iop) {
        enc_st_info info;
        if ((rc = enc_st_open(iop, &io, err, sizeof err)) ||
            (rc = enc_st_info_get(io, "volume.input", &info)) ||
            (rc = enc_st_get(io, "volume.input", info.rank, info.shape, &x, err, sizeof err))) {
            fprintf(stderr, "bench/colipri: %s: %s\n", iop, rc ? err : "no volume.input");
            return 1;
        }
        B = (int)info.shape[0];
        if (info.nelem != (size_t)B * in_n) {
            fprintf(stderr, "bench/colipri: %s: volume.input does not fit the model\n", iop);
            return 1;
        }
        if (enc_st_info_get(io, "volume.embed", &info) == ENC_OK &&
            enc_st_get(io, "volume.embed", 2, (const int64_t[]){B, E}, &want, err,
                       sizeof err) != ENC_OK)
            want = NULL;
    }
    float *own = NULL;
    if (x == NULL) {
        uint64_t seed = 7;
        own = malloc(in_n * sizeof *own);
        if (own == NULL)
            return 1;
        for (size_t i = 0; i < in_n; i++)
            own[i] = 2 * bench_frand01(&seed) - 1;
        x = own;
    }
    enc_state_opts so = {.flags = io ? ENC_STATE_HIDDEN : 0};
    enc_state *s;
    if ((rc = enc_state_new(m, ENC_VOLUME, B, &so, &s, err, sizeof err))) {
        fprintf(stderr, "bench/colipri: %s\n", err);
        return 1;
    }
    float *out = malloc((size_t)B * E * sizeof *out);
    if (out == NULL)
        return 1;
    t0 = bench_now();
    rc = enc_encode_volume(s, x, B, out);
    double t = bench_now() - t0;
    if (rc) {
        fprintf(stderr, "bench/colipri: %s\n", enc_state_errmsg(s));
        return 1;
    }
    double layer = 2.0 * T * D * 3 * D + 4.0 * (double)T * T * D + 2.0 * T * D * D +
                   2.0 * 3 * T * D * M;
    double flop = B * (L * layer + 2.0 * T * K * D + 2.0 * T * D * E);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    char ths[16];
    snprintf(ths, sizeof ths, "%d", th);
    printf("colipri volume %d x %d x %d (%d tokens), width %d, %d blocks, batch %d, "
           "%s threads\n", g.size[0], g.size[1], g.size[2], T, D, L, B, th > 0 ? ths : "all");
    printf("  load %.1f s, state %.0f MB\n", tload, enc_state_bytes(s) / 1e6);
    printf("  medsem: %.2f s per volume, %.1f GFLOP/s (%.2f TFLOP), peak RSS %.0f MB\n", t / B,
           flop / t / 1e9, flop / 1e12, ru.ru_maxrss / 1024.0);
    if (io) {
        compare_hidden(io, s, "volume", L);
        if (want)
            printf("  embedding: max abs diff %.2e\n", max_abs_diff(out, want, (size_t)B * E));
        if (enc_model_has(m, ENC_TEXT) && (rc = compare_text(m, io)))
            return 1;
    }
    free(out);
    free(own);
    enc_state_free(s);
    enc_st_close(io);
    enc_model_free(m);
    return 0;
}
