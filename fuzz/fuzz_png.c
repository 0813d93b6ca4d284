/* fuzz_png.c - imageio's PNG reader from memory (libpng underneath, our
 * checks and conversions on top). */
#include <stdint.h>

#include "imageio/imageio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    img_limits lim = {.max_voxels = (size_t)1 << 22, .max_pixels = (size_t)1 << 22};
    img_vol v = {0};
    char err[256];
    if (img_read_png_mem(data, size, "fuzz.png", &lim, &v, err, sizeof err) == IMG_OK)
        img_vol_free(&v);
    return 0;
}
