/* bench/image_pairs.c - exports the radiograph pairs that the learned cell
 * weights of the fingerprint score are fitted on (bench/fit_image_weights.py).
 *
 *   make bench/image_pairs
 *   medsem synth --out /tmp/r11 --volumes 0 --images 300 --rescans 150 --size small --seed 11
 *   bench/image_pairs /tmp/r11/train.jsonl /tmp/r11.pairs [min_score 0.85] [threads 2]
 *
 * Fingerprints every image of the manifest (dedup_fingerprint_image), aligns
 * every pair without weights (dedup__fingerprint_image_align, the score's
 * search) and writes each rescan pair (the same "study", or "rescan_of" it)
 * and each other pair scoring at least min_score.  A record: int32 i, j,
 * duplicate (0/1), 0; float32 unweighted score; float32 a[64 x 64]; float32
 * b aligned onto a's grid [64 x 64].  About 30 s for 450 images on 2 cores.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedup/dedup.h"

float dedup__fingerprint_image_align(const float *a, const float *b, float *aligned);

typedef struct shared {
    int n, nthreads;
    const float *fp;
    float *score; /* n x n, i < j */
} shared;

typedef struct tctx {
    shared *sh;
    int t;
} tctx;

static void *align_rows(void *arg)
{
    tctx *c = arg;
    const shared *sh = c->sh;
    for (int i = c->t; i < sh->n; i += sh->nthreads)
        for (int j = i + 1; j < sh->n; j++)
            sh->score[(size_t)i * sh->n + j] = dedup__fingerprint_image_align(
                sh->fp + (size_t)i * DEDUP_FP_IMAGE_DIM, sh->fp + (size_t)j * DEDUP_FP_IMAGE_DIM, NULL);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench/image_pairs MANIFEST OUT [min_score 0.85] [threads 2]\n");
        return 2;
    }
    float min_score = argc > 3 ? strtof(argv[3], NULL) : 0.85f;
    int nthreads = argc > 4 ? atoi(argv[4]) : 2;
    if (nthreads < 1 || nthreads > 64)
        nthreads = 2;
    FILE *f = fopen(argv[1], "r");
    if (!f) {
        perror(argv[1]);
        return 1;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", argv[1]);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    size_t cap = 0;
    int n = 0;
    char **key = NULL, line[1 << 16], err[512];
    float *fp = NULL;
    while (fgets(line, sizeof line, f)) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *kind = cJSON_GetObjectItemCaseSensitive(j, "kind"),
                    *file = cJSON_GetObjectItemCaseSensitive(j, "file"),
                    *of = cJSON_GetObjectItemCaseSensitive(j, "rescan_of"),
                    *study = cJSON_GetObjectItemCaseSensitive(j, "study");
        if (!cJSON_IsString(kind) || strcmp(kind->valuestring, "image") || !cJSON_IsString(file) ||
            !(cJSON_IsString(of) || cJSON_IsString(study))) {
            cJSON_Delete(j);
            continue;
        }
        if ((size_t)n == cap) {
            cap = cap ? 2 * cap : 256;
            key = realloc(key, cap * sizeof *key);
            fp = realloc(fp, cap * DEDUP_FP_IMAGE_DIM * sizeof *fp);
            if (!key || !fp) {
                fprintf(stderr, "out of memory\n");
                return 1;
            }
        }
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, file->valuestring);
        if (dedup_fingerprint_image(path, fp + (size_t)n * DEDUP_FP_IMAGE_DIM, err, sizeof err)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        key[n++] = strdup(cJSON_IsString(of) ? of->valuestring : study->valuestring);
        cJSON_Delete(j);
    }
    fclose(f);
    shared sh = {n, nthreads, fp, calloc((size_t)n * n, sizeof(float))};
    pthread_t th[64];
    tctx tc[64];
    for (int t = 0; t < nthreads; t++) {
        tc[t] = (tctx){&sh, t};
        pthread_create(&th[t], NULL, align_rows, &tc[t]);
    }
    for (int t = 0; t < nthreads; t++)
        pthread_join(th[t], NULL);
    FILE *o = fopen(argv[2], "wb");
    if (!o) {
        perror(argv[2]);
        return 1;
    }
    float *b = malloc(DEDUP_FP_IMAGE_DIM * sizeof *b);
    int kept = 0, dup = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++) {
            int32_t hdr[4] = {i, j, !strcmp(key[i], key[j]), 0};
            float s = sh.score[(size_t)i * n + j];
            dup += hdr[2];
            if (!hdr[2] && s < min_score)
                continue;
            dedup__fingerprint_image_align(fp + (size_t)i * DEDUP_FP_IMAGE_DIM,
                                         fp + (size_t)j * DEDUP_FP_IMAGE_DIM, b);
            fwrite(hdr, sizeof *hdr, 4, o);
            fwrite(&s, sizeof s, 1, o);
            fwrite(fp + (size_t)i * DEDUP_FP_IMAGE_DIM, sizeof *fp, DEDUP_FP_IMAGE_DIM, o);
            fwrite(b, sizeof *b, DEDUP_FP_IMAGE_DIM, o);
            kept++;
        }
    if (fclose(o)) {
        perror(argv[2]);
        return 1;
    }
    fprintf(stderr, "%d images, %d duplicate pairs, %d pairs written to %s\n", n, dup, kept,
            argv[2]);
    for (int i = 0; i < n; i++)
        free(key[i]);
    free(key);
    free(fp);
    free(b);
    free(sh.score);
    return 0;
}
