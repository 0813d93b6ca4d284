/* fuzz_npy.c - the .npy reader of medsem import: magic, version, the header
 * dict (descr, fortran_order, shape), sizes; then every row. */
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#include "fuzz/fuzz_util.h"
#include "indexer/indexer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[256];
    int fd;
    if (fuzz_as_file(data, size, path, sizeof path, &fd))
        return 0;
    idx_npy *m = NULL;
    if (idx_npy_open(path, &m, err, sizeof err) == 0) {
        size_t rows = idx_npy_rows(m), cols = idx_npy_cols(m);
        float *row = cols && cols <= (1u << 16) ? malloc(cols * sizeof *row) : NULL;
        for (size_t i = 0; row && i < rows && i < 4096; i++)
            idx_npy_row(m, i, row);
        free(row);
        idx_npy_close(m);
    }
    close(fd);
    return 0;
}
