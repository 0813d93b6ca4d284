/* preprocess.c - image files to model input tensors (see preprocess.h). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imageio/imageio.h"
#include "encoder/preprocess.h"

enc_modality enc_modality_parse(const char *s)
{
    if (!s)
        return ENC_MOD_OTHER;
    if (!strcasecmp(s, "CT"))
        return ENC_MOD_CT;
    if (!strcasecmp(s, "MR") || !strcasecmp(s, "MRI"))
        return ENC_MOD_MR;
    if (!strcasecmp(s, "CR") || !strcasecmp(s, "DX") || !strcasecmp(s, "XR") ||
        !strcasecmp(s, "X-ray"))
        return ENC_MOD_XRAY;
    return ENC_MOD_OTHER;
}

size_t enc_prep_volume_count(const enc_prep *p)
{
    return (size_t)p->channels * p->vol_size[0] * p->vol_size[1] * p->vol_size[2];
}

size_t enc_prep_image_count(const enc_prep *p)
{
    return (size_t)p->channels * p->img_size[0] * p->img_size[1];
}

static int check(const enc_prep *p, int vol, char *errbuf, size_t errlen)
{
    int ok = (p->channels == 1 || p->channels == 3);
    if (vol)
        for (int i = 0; i < 3; i++)
            ok = ok && p->vol_size[i] > 0 && p->vol_spacing[i] > 0 && isfinite(p->vol_spacing[i]);
    else
        ok = ok && p->img_size[0] > 0 && p->img_size[1] > 0;
    ok = ok && p->ct_window[0] < p->ct_window[1] && p->mr_pct[0] >= 0 &&
         p->mr_pct[0] < p->mr_pct[1] && p->mr_pct[1] <= 100;
    for (int c = 0; c < p->channels; c++)
        ok = ok && p->std[c] > 0;
    if (!ok && errbuf)
        snprintf(errbuf, errlen, "invalid preprocessing parameters in the model configuration");
    return ok ? ENC_OK : ENC_INVAL;
}

/* Maps intensities to [0, 1] by modality. */
static int intensities(img_vol *v, enc_modality mod, const enc_prep *p, const char *path,
                       char *errbuf, size_t errlen)
{
    if (mod == ENC_MOD_CT && !p->no_window) {
        img_ct_window(v, p->ct_window[0], p->ct_window[1]);
        return ENC_OK;
    }
    int rc = img_mr_scale(v, p->mr_pct[0], p->mr_pct[1]);
    if (rc && errbuf)
        snprintf(errbuf, errlen, "%s: cannot scale intensities: %s", path, enc_strerror(rc));
    return rc;
}

/* Replicates one [0, 1] plane of n values into C normalised channels. */
static void channels(const float *src, size_t n, const enc_prep *p, float *out)
{
    for (int c = 0; c < p->channels; c++) {
        float m = p->mean[c], inv = 1.0f / p->std[c];
        float *o = out + (size_t)c * n;
        for (size_t i = 0; i < n; i++)
            o[i] = (src[i] - m) * inv;
    }
}

/* A volume as read, to the model's input; v's intensities are mapped in
 * place. */
static int prep_volume(img_vol *v, const char *path, enc_modality mod, const enc_prep *p,
                       float *out, char *errbuf, size_t errlen)
{
    img_vol r = {0};
    int rc = p->torchio ? ENC_OK : intensities(v, mod, p, path, errbuf, errlen);
    float sp[3] = {p->vol_spacing[0], p->vol_spacing[1], p->vol_spacing[2]};
    if (p->fit) {
        int n[3] = {v->nx, v->ny, v->nz}, want[3] = {p->vol_size[2], p->vol_size[1], p->vol_size[0]};
        for (int a = 0; a < 3; a++)
            sp[a] = (float)((double)n[a] * v->spacing[a] / want[a]);
    }
    if (!rc)
        rc = img_resample(v, sp, p->vol_size[2], p->vol_size[1], p->vol_size[0], &r, errbuf,
                              errlen);
    size_t n = (size_t)p->vol_size[0] * p->vol_size[1] * p->vol_size[2];
    if (!rc && p->torchio) /* Clamp and RescaleIntensity after Resample */
        img_ct_window(&r, p->ct_window[0], p->ct_window[1]);
    if (!rc && p->xyz) {
        /* torchio's tensor of a RAS image: [X, Y, Z] */
        float *t = malloc(n * sizeof *t);
        if (t == NULL) {
            img_vol_free(&r);
            if (errbuf)
                snprintf(errbuf, errlen, "%s: out of memory", path);
            return ENC_NOMEM;
        }
        const size_t X = (size_t)p->vol_size[2], Y = (size_t)p->vol_size[1];
        const size_t Z = (size_t)p->vol_size[0];
        for (size_t z = 0; z < Z; z++)
            for (size_t y = 0; y < Y; y++)
                for (size_t x = 0; x < X; x++)
                    t[(x * Y + y) * Z + z] = r.data[(z * Y + y) * X + x];
        channels(t, n, p, out);
        free(t);
    } else if (!rc) {
        channels(r.data, n, p, out);
    }
    img_vol_free(&r);
    return rc;
}

/* An image as read, to the model's input; v is modified in place. */
static int prep_image(img_vol *v, const char *path, enc_modality mod, const enc_prep *p,
                      float *out, char *errbuf, size_t errlen)
{
    int rc = ENC_OK;
    img_vol r = {0};
    int png = v->format == IMG_FMT_PNG || v->format == IMG_FMT_DISPLAY;
    /* PNG samples are already [0, 1] of their bit depth, a DICOM
     * radiograph's are as displayed (its window); NIfTI values are
     * physical and need the modality's mapping. */
    if (!png)
        rc = intensities(v, mod, p, path, errbuf, errlen);
    if (!rc && !png) /* RAS order to picture order, as a PNG radiograph is stored */
        img_picture_order(v);
    if (!rc) {
        /* One spacing for both axes keeps the aspect ratio; the larger side
         * fills the model's input and the other is padded. */
        int H = p->img_size[0], W = p->img_size[1];
        double sx = (double)v->nx * v->spacing[0] / W, sy = (double)v->ny * v->spacing[1] / H;
        float s = (float)(sx > sy ? sx : sy);
        float sp[3] = {s, s, v->spacing[2] > 0 ? v->spacing[2] : 1.0f};
        rc = img_resample(v, sp, W, H, 1, &r, errbuf, errlen);
    }
    if (!rc)
        channels(r.data, (size_t)p->img_size[0] * p->img_size[1], p, out);
    img_vol_free(&r);
    return rc;
}

/* The rest of enc_prep_file and enc_prep_mem, once v is read. */
static int prep_read(int volume, int rc, img_vol *v, const char *name, enc_modality mod,
                     const enc_prep *p, float *out, enc_prep_seen seen, void *ctx,
                     char *errbuf, size_t errlen)
{
    /* no modality given: a DICOM file says its own */
    if (mod == ENC_MOD_OTHER && v->modality[0])
        mod = enc_modality_parse(v->modality);
    if (!rc && seen)
        rc = seen(ctx, v, errbuf, errlen);
    if (!rc)
        rc = volume ? prep_volume(v, name, mod, p, out, errbuf, errlen)
                    : prep_image(v, name, mod, p, out, errbuf, errlen);
    img_vol_free(v);
    return rc;
}

int enc_prep_file(int volume, const char *path, enc_modality mod, const enc_prep *p,
                  const img_limits *lim, float *out, enc_prep_seen seen, void *ctx, char *errbuf,
                  size_t errlen)
{
    int rc = check(p, volume, errbuf, errlen);
    if (rc)
        return rc;
    img_vol v = {0};
    rc = volume ? img_read_volume(path, lim, &v, errbuf, errlen)
                : img_read_2d(path, lim, &v, errbuf, errlen);
    return prep_read(volume, rc, &v, path, mod, p, out, seen, ctx, errbuf, errlen);
}

int enc_prep_mem(int volume, const void *data, size_t len, const char *name, enc_modality mod,
                 const enc_prep *p, const img_limits *lim, float *out, enc_prep_seen seen,
                 void *ctx, char *errbuf, size_t errlen)
{
    int rc = check(p, volume, errbuf, errlen);
    if (rc)
        return rc;
    img_vol v = {0};
    rc = volume ? img_read_volume_mem(data, len, name, lim, &v, errbuf, errlen)
                : img_read_2d_mem(data, len, name, lim, &v, errbuf, errlen);
    return prep_read(volume, rc, &v, name ? name : "(memory)", mod, p, out, seen, ctx, errbuf,
                     errlen);
}

int enc_prep_volume(const char *path, enc_modality mod, const enc_prep *p, float *out,
                    char *errbuf, size_t errlen)
{
    return enc_prep_file(1, path, mod, p, NULL, out, NULL, NULL, errbuf, errlen);
}

int enc_prep_image(const char *path, enc_modality mod, const enc_prep *p, float *out,
                   char *errbuf, size_t errlen)
{
    return enc_prep_file(0, path, mod, p, NULL, out, NULL, NULL, errbuf, errlen);
}

int enc_prep_slice_view(const char *value)
{
    return value == NULL || !strcmp(value, "ras") ? 0 : !strcmp(value, "display") ? 1 : -1;
}

void enc_prep_slice(const float *vol, int C, int D, int H, int W, int z, int display, float *out)
{
    size_t hw = (size_t)H * W;
    for (int c = 0; c < C; c++) {
        const float *src = vol + ((size_t)c * D + z) * hw;
        float *dst = out + (size_t)c * hw;
        if (!display) {
            memcpy(dst, src, hw * sizeof *dst);
            continue;
        }
        for (size_t i = 0; i < hw; i++) /* half a turn reverses the plane */
            dst[i] = src[hw - 1 - i];
    }
}


int enc_prep_native_z(const enc_prep *p, uint32_t nz, double spacing_z, uint32_t slice)
{
    if (!nz)
        return (int)slice;
    double n = nz, D = p->vol_size[0];
    double s = spacing_z > 0 ? spacing_z : 1, t = p->fit ? n * s / D : p->vol_spacing[2];
    double c = (n - 1) / 2 + ((double)slice - (D - 1) / 2) * t / s;
    long z = lround(c);
    return (int)(z < 0 ? 0 : z > (long)n - 1 ? (long)n - 1 : z);
}
