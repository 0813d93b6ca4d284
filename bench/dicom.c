/* bench/dicom.c - read + preprocess throughput of a DICOM series against
 * the NIfTI of the same volume, side by side in one run (bench/dicom.sh
 * makes the inputs).
 *
 *   bench/dicom MODEL_DIR REPEATS INPUT...
 *
 * Each INPUT (a .nii, a .nii.gz, a .dcm or a series folder) is read and
 * preprocessed to the model's volume input REPEATS times, after one warm-up
 * (the page cache holds the files: this measures decoding, not the disk);
 * prints the median time per volume, the voxels read per second and the
 * ratio to the first input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "encoder/encoder.h"
#include "imageio/imageio.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static size_t g_voxels;

static int seen(void *ctx, const img_vol *v, char *errbuf, size_t errlen)
{
    (void)ctx, (void)errbuf, (void)errlen;
    g_voxels = (size_t)v->nx * v->ny * v->nz;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench/dicom MODEL_DIR REPEATS INPUT...\n");
        return 2;
    }
    char err[512];
    enc_pipeline *p;
    if (enc_pipeline_open(argv[1], 1, &p, err, sizeof err)) {
        fprintf(stderr, "bench/dicom: %s\n", err);
        return 1;
    }
    const enc_prep *prep = enc_pipeline_prep(p);
    int reps = atoi(argv[2]);
    if (reps < 1)
        reps = 1;
    float *out = malloc(enc_prep_volume_count(prep) * sizeof *out);
    double *t = malloc((size_t)reps * sizeof *t), base = 0;
    printf("%-44s %10s %12s %8s\n", "input", "ms/volume", "Mvoxel/s", "ratio");
    for (int i = 3; i < argc; i++) {
        for (int r = -1; r < reps; r++) {
            double t0 = now();
            if (enc_prep_file(1, argv[i], ENC_MOD_CT, prep, NULL, out, seen, NULL, err,
                              sizeof err)) {
                fprintf(stderr, "bench/dicom: %s\n", err);
                return 1;
            }
            if (r >= 0)
                t[r] = now() - t0;
        }
        qsort(t, (size_t)reps, sizeof *t, cmp_d);
        double med = t[reps / 2];
        if (i == 3)
            base = med;
        const char *name = strrchr(argv[i], '/');
        printf("%-44s %10.1f %12.1f %8.2f\n", name ? name + 1 : argv[i], 1e3 * med,
               (double)g_voxels / med / 1e6, med / base);
    }
    free(out);
    free(t);
    enc_pipeline_close(p);
    return 0;
}
