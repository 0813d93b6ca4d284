/* fuzz_torch.c - the PyTorch checkpoint reader (encoder/torchfile.h): the
 * zip, the restricted unpickler and every tensor's values. */
#include <stdint.h>
#include <stdlib.h>

#include "encoder/encoder.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    enc_torch *t;
    char err[256];
    if (enc_torch_open_mem(data, size, "fuzz.pt", &t, err, sizeof err) != ENC_OK)
        return 0;
    for (size_t i = 0; i < enc_torch_count(t); i++) {
        size_t n = 1;
        const int64_t *s = enc_torch_shape(t, i);
        for (int d = 0; d < enc_torch_rank(t, i); d++)
            n *= (size_t)s[d];
        if (n > ((size_t)1 << 20))
            continue;
        float *v = malloc((n ? n : 1) * sizeof *v);
        if (v)
            enc_torch_get_f32(t, i, v, err, sizeof err);
        free(v);
    }
    enc_torch_close(t);
    return 0;
}
