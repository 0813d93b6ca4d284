/* fuzz_dicom.c - imageio's DICOM reader (the structural walk, then GDCM)
 * from memory, as a volume and as a radiograph, with small limits so that
 * a header's claims cannot make the target itself slow.  Inputs without
 * the Part 10 magic are given one, so that the fuzzer spends its time past
 * it; inputs that start as a zip go as they are (a zipped series). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "imageio/imageio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    img_limits lim = {.max_voxels = (size_t)1 << 20, .max_pixels = (size_t)1 << 20};
    const uint8_t *in = data;
    uint8_t *buf = NULL;
    int zip = size >= 4 && !memcmp(data, "PK\x03\x04", 4); /* a zipped series */
    if (!img_is_dicom_mem(data, size) && !zip) {
        buf = malloc(size + 132);
        if (!buf)
            return 0;
        memset(buf, 0, 128);
        memcpy(buf + 128, "DICM", 4);
        memcpy(buf + 132, data, size);
        in = buf;
        size += 132;
    }
    img_vol v = {0};
    char err[256];
    if (img_read_dicom_mem(in, size, "fuzz.dcm", &lim, &v, NULL, err, sizeof err) == IMG_OK)
        img_vol_free(&v);
    img_vol w = {0};
    if (img_read_2d_mem(in, size, "fuzz.dcm", &lim, &w, err, sizeof err) == IMG_OK)
        img_vol_free(&w);
    free(buf);
    return 0;
}
