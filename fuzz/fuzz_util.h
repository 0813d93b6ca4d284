/* fuzz_util.h - what the libFuzzer targets share (fuzz/README.md). */
#ifndef MEDSEM_FUZZ_UTIL_H
#define MEDSEM_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

/* The bytes as a file, for readers that take a path: a memfd named by
 * /proc/self/fd/N (no disk, nothing left behind).  *fd gets the
 * descriptor to close; 0, or -1 when the system refuses. */
static inline int fuzz_as_file(const uint8_t *data, size_t size, char *path, size_t plen,
                               int *fd)
{
    *fd = memfd_create("medsem-fuzz", 0);
    if (*fd < 0)
        return -1;
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(*fd, data + off, size - off);
        if (w <= 0) {
            close(*fd);
            return -1;
        }
        off += (size_t)w;
    }
    snprintf(path, plen, "/proc/self/fd/%d", *fd);
    return 0;
}

#endif
