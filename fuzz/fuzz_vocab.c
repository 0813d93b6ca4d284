/* fuzz_vocab.c - loading a vocab.txt (lines, special tokens, duplicates,
 * UTF-8), then encoding a fixed text with what was loaded. */
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
    enc_tok *t = NULL;
    if (enc_tok_load(path, NULL, &t, err, sizeof err) == ENC_OK) {
        int32_t ids[64], mask[64];
        size_t n;
        enc_tok_encode(t, "An 8 mm nodule in the right upper lobe; no pleural effusion.", 64, ids,
                       mask, &n, err, sizeof err);
        enc_tok_free(t);
    }
    close(fd);
    return 0;
}
