/* fuzz_manifest.c - an ingest manifest (JSONL: kinds, files, reports,
 * payloads, blank lines, bad JSON), read into a plan. */
#include <stdint.h>
#include <unistd.h>

#include "fuzz/fuzz_util.h"
#include "ingest/ingest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char path[64], err[512];
    int fd;
    if (fuzz_as_file(data, size, path, sizeof path, &fd))
        return 0;
    ingest_opts o = {0};
    ingest_plan *pl = NULL;
    if (ingest_plan_read(path, &o, &pl, err, sizeof err) == INGEST_OK)
        ingest_plan_free(pl);
    close(fd);
    return 0;
}
