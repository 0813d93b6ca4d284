/* fuzz_safetensors.c - the safetensors reader: header JSON, offsets, dtypes
 * and shapes, then every tensor's info and its data as float32. */
#include <stdint.h>
#include <unistd.h>

#include "encoder/encoder.h"
#include "fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[256];
    int fd;
    if (fuzz_as_file(data, size, path, sizeof path, &fd))
        return 0;
    enc_st *st = NULL;
    if (enc_st_open(path, &st, err, sizeof err) == ENC_OK) {
        for (size_t i = 0; i < enc_st_count(st); i++) {
            const char *name = enc_st_name(st, i);
            enc_st_info info;
            const float *x;
            if (name && enc_st_info_get(st, name, &info) == ENC_OK && info.nelem <= (1u << 22))
                enc_st_get(st, name, info.rank, info.shape, &x, err, sizeof err);
        }
        enc_st_close(st);
    }
    close(fd);
    return 0;
}
