/* bench/encode.c - encoder throughput on the CPU backend, in one run:
 * ViT-B/16 on 224 x 224 images, the same ViT on M3D-CLIP-size volumes
 * (1 x 32 x 256 x 256, patch 4 x 16 x 16: 2048 patches) and BERT-base on
 * 128-token texts, next to the machine's measured sgemm peak.
 *
 *   make bench && bench/encode [--threads N] [--seconds S] [--no-3d] [--no-torch]
 *                              [--only image|volume|text]
 *
 * Then, where PyTorch is installed, bench/encode_torch.py prints PyTorch's
 * throughput on the same shapes in the same run.
 *
 * The model is built in memory with random weights (enc_model_new_random,
 * medsem architecture: vision 768 wide, 12 layers, 12 heads, MLP 3072; text
 * BERT-base, vocabulary 30522; embed 512), so no files are needed.  GFLOP/s
 * counts the multiply-adds of the matrix products (2 flops each: patch
 * embedding, qkv, q k^T, p v, output and MLP projections); the element-wise
 * ops are not counted but their time is.  Each case runs once to warm up,
 * then as often as fits in --seconds (at least once).  Volumes are timed at
 * batch 1 and 2 (one ViT-B pass over 2049 tokens is ~0.5 TFLOP); images and
 * texts at 1 and 8.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "encoder/encoder.h"
#include "bench/bench_util.h"

static uint64_t rng_state = 1;
static float frand(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    return (float)((double)(z >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

/* Matrix-product flops of one input through a transformer of L layers,
 * width D, MLP width M, T tokens, plus a patch embedding [N, K] x [K, D]. */
static double tower_flops(double T, double D, double M, double L, double N, double K)
{
    double layer = 2 * T * D * 3 * D   /* qkv */
                   + 2 * 2 * T * T * D /* q k^T and p v, all heads */
                   + 2 * T * D * D     /* output projection */
                   + 2 * 2 * T * D * M; /* MLP */
    return L * layer + 2 * N * K * D;
}

typedef struct bcase {
    const char *name;
    enc_kind kind;
    int batch;
} bcase;

static int run_case(const enc_model *m, const bcase *c, double seconds)
{
    enc_input_geom g;
    enc_model_geom(m, c->kind, &g);
    char err[256];
    enc_state *s;
    int rc = enc_state_new(m, c->kind, c->batch, NULL, &s, err, sizeof err);
    if (rc) {
        fprintf(stderr, "%s: %s\n", c->name, err);
        return rc;
    }
    const int B = c->batch, E = enc_model_embed_dim(m);
    size_t in_n = c->kind == ENC_TEXT ? (size_t)B * g.tokens
                                      : (size_t)B * g.channels * g.size[0] * g.size[1] * g.size[2];
    float *in = malloc(in_n * sizeof(float)), *out = malloc((size_t)B * E * sizeof(float));
    int32_t *ids = malloc(in_n * sizeof(int32_t));
    if (in == NULL || out == NULL || ids == NULL) {
        fprintf(stderr, "out of memory\n");
        free(in), free(out), free(ids);
        enc_state_free(s);
        return ENC_NOMEM;
    }
    for (size_t i = 0; i < in_n; i++) {
        in[i] = frand();
        ids[i] = (int32_t)((frand() + 1) * 0.5f * (float)(g.vocab_size - 1));
    }
    double flops;
    if (c->kind == ENC_TEXT) {
        flops = tower_flops(g.tokens, g.hidden_size, 4.0 * g.hidden_size, g.num_layers, 0, 0);
    } else {
        double N = g.tokens - 1, K = (double)g.channels * g.patch[0] * g.patch[1] * g.patch[2];
        flops = tower_flops(g.tokens, g.hidden_size, 4.0 * g.hidden_size, g.num_layers, N, K);
    }
    int runs = 0;
    double t0 = 0, elapsed = 0;
    for (;;) {
        rc = c->kind == ENC_TEXT    ? enc_encode_text(s, ids, NULL, B, g.tokens, out)
             : c->kind == ENC_IMAGE ? enc_encode_image(s, in, B, out)
                                    : enc_encode_volume(s, in, B, out);
        if (rc) {
            fprintf(stderr, "%s: %s\n", c->name, enc_state_errmsg(s));
            break;
        }
        if (t0 == 0) { /* the warm-up run: first touch of the arena */
            t0 = bench_now();
            continue;
        }
        runs++;
        elapsed = bench_now() - t0;
        if (elapsed >= seconds)
            break;
    }
    if (rc == ENC_OK) {
        double per_batch = elapsed / runs;
        printf("%-34s %5d %6d %10.2f %10.1f %9.1f %8.0f\n", c->name, B, runs, B / per_batch,
               per_batch * 1e3 / B, flops * B / per_batch * 1e-9,
               (double)enc_state_bytes(s) / (1 << 20));
    }
    free(in), free(out), free(ids);
    enc_state_free(s);
    return rc;
}

/* PyTorch's figures on the same shapes, side by side, when PyTorch is
 * importable (bench/encode_torch.py, next to this program's source). */
static int run_pytorch(int threads, double seconds, int no3d)
{
    /* The interpreter on PATH may be a private one without torch; Debian's
     * python3-torch lives under /usr/bin/python3. */
    const char *env = getenv("MEDSEM_BENCH_PYTHON");
    const char *cands[] = {env ? env : "python3", "/usr/bin/python3"};
    const char *py = NULL;
    char cmd[4096];
    for (size_t i = 0; i < (env ? 1u : 2u) && !py; i++) {
        snprintf(cmd, sizeof cmd, "%s -c 'import torch' >/dev/null 2>&1", cands[i]);
        if (system(cmd) == 0)
            py = cands[i];
    }
    if (!py) {
        printf("\nPyTorch: not importable (apt-get install python3-torch), skipped\n");
        return 0;
    }
    const char *src = getenv("top_srcdir");
    snprintf(cmd, sizeof cmd, "%s %s/bench/encode_torch.py --seconds %g --threads %d%s", py,
             src ? src : MEDSEM_SRCDIR, seconds, threads > 0 ? threads : 0,
             no3d ? " --no-3d" : "");
    printf("\n");
    fflush(stdout);
    return system(cmd) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    int threads = 0, no3d = 0, only = -1, no_torch = 0;
    double seconds = 3.0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--no-3d") == 0)
            no3d = 1;
        else if (strcmp(argv[i], "--no-torch") == 0)
            no_torch = 1;
        else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            i++;
            only = strcmp(argv[i], "image") == 0    ? ENC_IMAGE
                   : strcmp(argv[i], "volume") == 0 ? ENC_VOLUME
                   : strcmp(argv[i], "text") == 0   ? ENC_TEXT
                                                    : -2;
        } else
            only = -2;
        if (only == -2) {
            fprintf(stderr,
                    "usage: %s [--threads N] [--seconds S] [--no-3d] [--no-torch]"
                    " [--only image|volume|text]\n",
                    argv[0]);
            return 2;
        }
    }
    static const char *config =
        "{\"architecture\": \"medsem\", \"embed_dim\": 512,"
        " \"vision\": {\"hidden_size\": 768, \"num_layers\": 12, \"num_heads\": 12,"
        "  \"mlp_dim\": 3072, \"layer_norm_eps\": 1e-6, \"in_channels\": 1,"
        "  \"image_size\": [224, 224], \"patch_size\": [16, 16],"
        "  \"volume_size\": [32, 256, 256], \"volume_patch_size\": [4, 16, 16]},"
        " \"text\": {\"vocab_size\": 30522, \"hidden_size\": 768, \"num_layers\": 12,"
        "  \"num_heads\": 12, \"intermediate_size\": 3072, \"max_position_embeddings\": 512,"
        "  \"type_vocab_size\": 2, \"layer_norm_eps\": 1e-12, \"max_len\": 128}}";
    double t = bench_now();
    enc_backend *be = enc_backend_cpu_new(threads);
    if (be == NULL) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    enc_model_opts mo = {.backend = be};
    enc_model *m;
    char err[512];
    if (enc_model_new_random(config, 1, &mo, &m, err, sizeof err) != ENC_OK) {
        fprintf(stderr, "model: %s\n", err);
        return 1;
    }
    size_t params = 0;
    for (size_t i = 0; i < enc_model_param_count(m); i++) {
        enc_param p;
        enc_model_param(m, i, &p);
        params += p.count;
    }
    printf("random medsem model: %.1fM parameters, built in %.1f s; %d threads\n", params * 1e-6,
           bench_now() - t, be->nthreads);
    /* the peak with OpenBLAS's own threads, then back to the backend's setting */
    openblas_set_num_threads(be->nthreads);
    printf("sgemm peak (2048^3, OpenBLAS, %d threads, best of 3): %.1f GFLOP/s\n\n",
           be->nthreads, bench_sgemm_peak(2048, 3));
    openblas_set_num_threads(1);
    printf("%-34s %5s %6s %10s %10s %9s %8s\n", "case", "batch", "runs", "items/s", "ms/item",
           "GFLOP/s", "arena MB");
    const bcase cases[] = {
        {"ViT-B/16 image 224x224", ENC_IMAGE, 1},
        {"ViT-B/16 image 224x224", ENC_IMAGE, 8},
        {"ViT-B volume 1x32x256x256 p4x16x16", ENC_VOLUME, 1},
        {"ViT-B volume 1x32x256x256 p4x16x16", ENC_VOLUME, 2},
        {"BERT-base text 128 tokens", ENC_TEXT, 1},
        {"BERT-base text 128 tokens", ENC_TEXT, 8},
    };
    int rc = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0] && rc == 0; i++) {
        if ((no3d && cases[i].kind == ENC_VOLUME) || (only >= 0 && (int)cases[i].kind != only))
            continue;
        rc = run_case(m, &cases[i], seconds);
        fflush(stdout);
    }
    int nthreads = be->nthreads;
    enc_model_free(m);
    enc_backend_free(be);
    if (rc == 0 && !no_torch)
        rc = run_pytorch(nthreads, seconds, no3d);
    return rc ? 1 : 0;
}
