/* fuzz_nifti.c - imageio's NIfTI-1/2 reader (plain and gzip) from memory,
 * as a volume and as a 2-D image, with small limits so that a header's
 * claims cannot make the target itself slow. */
#include <stdint.h>

#include "imageio/imageio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    img_limits lim = {.max_voxels = (size_t)1 << 22, .max_pixels = (size_t)1 << 22};
    img_vol v = {0};
    char err[256];
    if (img_read_nifti_mem(data, size, "fuzz.nii", &lim, &v, err, sizeof err) == IMG_OK)
        img_vol_free(&v);
    img_vol w = {0};
    if (img_read_2d_mem(data, size, "fuzz.nii", &lim, &w, err, sizeof err) == IMG_OK)
        img_vol_free(&w);
    return 0;
}
