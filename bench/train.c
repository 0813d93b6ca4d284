/* bench/train.c - training throughput of the default preset (`medsem train`'s
 * built-in config) on the CPU, next to the machine's measured sgemm peak.
 *
 *   make bench && bench/train [--threads N] [--steps N] [--slice-k K]
 *                             [--batch-volumes N] [--batch-images N] [--stem C1,C2,...]
 *
 * Everything is in memory: random volumes and radiographs (the preset's
 * 16 x 64 x 64 and 64 x 64) paired with a few report texts, a vocabulary
 * built from them (the embedding table's size does not change the cost of
 * a step), random weights.  Each step is a full `medsem train` step (forward
 * with [CLS] attention, slice selection, the losses, backward through the
 * three towers, clipping, AdamW).  Samples/s counts visual inputs encoded
 * (volumes + radiographs + selected slices); GFLOP/s counts the matrix
 * products of forward and backward (trn_trainer_step_flops); the fraction
 * of the peak compares it with one 2048^3 sgemm on the same threads.
 * --stem sets vision.stem_channels (a convolution stem ahead of the patch
 * embeddings, docs/encoder.md); the GFLOP/s then include the stem.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cblas.h>

#include "encoder/encoder.h"
#include "train/train.h"
#include "bench/bench_util.h"

static const char *const REPORTS[] = {
    "Findings: The lungs are clear. No pleural effusion or pneumothorax.\nImpression: Normal.",
    "Findings: A 9 mm solid nodule in the right upper lobe. No focal consolidation.",
    "Findings: Small left pleural effusion. The heart is mildly enlarged.\nImpression: "
    "Cardiomegaly. Left effusion.",
    "Findings: Emphysematous changes with upper lobe bullae. No pulmonary mass.",
};

int main(int argc, char **argv)
{
    trn_trainer_opts o = TRN_TRAINER_OPTS_INIT;
    int steps = 10;
    const char *stem = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            o.threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc)
            steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--slice-k") && i + 1 < argc)
            o.slice_k = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch-volumes") && i + 1 < argc)
            o.batch_volumes = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch-images") && i + 1 < argc)
            o.batch_images = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--stem") && i + 1 < argc)
            stem = argv[++i];
        else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--steps N] [--slice-k K] [--batch-volumes N]"
                    " [--batch-images N] [--stem C1,C2,...]\n",
                    argv[0]);
            return 2;
        }
    }
    if (o.threads <= 0)
        o.threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (steps < 1)
        steps = 1;
    char err[512], dir[] = "/tmp/medsem-bench-train-XXXXXX", path[600];
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(path, sizeof path, "%s/vocab.txt", dir);
    char **tokens;
    size_t ntok;
    enc_tok *tok = NULL;
    if (trn_vocab_build(REPORTS, 4, 200, NULL, &tokens, &ntok) ||
        trn_vocab_write(path, (const char *const *)tokens, ntok, err, sizeof err) ||
        enc_tok_load(path, NULL, &tok, err, sizeof err)) {
        fprintf(stderr, "vocabulary: %s\n", err);
        return 1;
    }
    trn_vocab_free(tokens, ntok);
    remove(path);
    rmdir(dir);
    cJSON *cfg = cJSON_Parse(trn_trainer_default_config());
    cJSON *text = cJSON_GetObjectItemCaseSensitive(cfg, "text");
    cJSON_ReplaceItemInObjectCaseSensitive(text, "vocab_size",
                                           cJSON_CreateNumber((double)enc_tok_vocab_size(tok)));
    if (stem != NULL) {
        cJSON *chans = cJSON_CreateArray();
        for (const char *p = stem; *p;) {
            char *end;
            long c = strtol(p, &end, 10);
            if (end == p || c < 1) {
                fprintf(stderr, "--stem: expected channel counts such as 16,32\n");
                return 2;
            }
            cJSON_AddItemToArray(chans, cJSON_CreateNumber((double)c));
            p = *end == ',' ? end + 1 : end;
        }
        cJSON_AddItemToObject(cJSON_GetObjectItemCaseSensitive(cfg, "vision"), "stem_channels",
                              chans);
    }
    char *cfgtext = cJSON_PrintUnformatted(cfg);
    cJSON_Delete(cfg);
    trn_trainer *t;
    if (trn_trainer_new(cfgtext, tok, &o, &t, err, sizeof err)) {
        fprintf(stderr, "trainer: %s\n", err);
        return 1;
    }
    free(cfgtext);
    size_t np = trn_adamw_count(trn_trainer_optimizer(t));
    float *x = malloc(16 * 64 * 64 * sizeof *x);
    uint64_t s = 7;
    for (int i = 0; i < 64; i++) {
        for (int j = 0; j < 16 * 64 * 64; j++)
            x[j] = bench_frand01(&s);
        if (trn_trainer_add(t, ENC_VOLUME, x, REPORTS[i % 4], err, sizeof err) ||
            trn_trainer_add(t, ENC_IMAGE, x, REPORTS[(i + 1) % 4], err, sizeof err)) {
            fprintf(stderr, "items: %s\n", err);
            return 1;
        }
    }
    free(x);
    printf("default preset: %.2fM parameters; batch %d volumes + %d radiographs + %d slices; "
           "%d threads\n",
           np * 1e-6, o.batch_volumes, o.batch_images, o.batch_volumes * o.slice_k, o.threads);
    double flops = trn_trainer_step_flops(t);
    trn_trainer_stats st;
    if (trn_trainer_step(t, &st, err, sizeof err)) { /* warm-up: plans the states */
        fprintf(stderr, "step: %s\n", err);
        return 1;
    }
    double t0 = bench_now();
    for (int i = 0; i < steps; i++)
        if (trn_trainer_step(t, &st, err, sizeof err)) {
            fprintf(stderr, "step: %s\n", err);
            return 1;
        }
    double el = bench_now() - t0;
    trn_trainer_free(t);
    enc_tok_free(tok);
    openblas_set_num_threads(o.threads);
    double peak = bench_sgemm_peak(2048, 3);
    double gf = flops * steps / el * 1e-9;
    printf("%d steps in %.2f s: %.3f s/step, %.1f samples/s, %.2f GFLOP/step, %.1f GFLOP/s\n",
           steps, el, el / steps, st.samples * steps / el, flops * 1e-9, gf);
    printf("sgemm peak (2048^3, OpenBLAS, %d threads, best of 3): %.1f GFLOP/s; training at "
           "%.0f%% of it\n",
           o.threads, peak, 100 * gf / peak);
    return 0;
}
