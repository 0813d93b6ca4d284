/* imageio/internal.h: what the readers of imageio/ share (not public). */
#ifndef MEDSEM_IMAGEIO_INTERNAL_H
#define MEDSEM_IMAGEIO_INTERNAL_H

#include "imageio/imageio.h"

#include <stdint.h>

/* Voxels f (n[0] x n[1] x n[2], i fastest; owned: kept in *out or freed)
 * whose voxel (i, j, k) centre is at A (ijk1) in RAS mm, turned to the
 * nearest RAS+ axes as img_read_nifti does (a permutation with flips; an
 * oblique residual stays in the affine).  src names where A came from in
 * messages ("sform", "ImageOrientationPatient").  Codes: IMG_FORMAT (two
 * axes on one world axis, singular), IMG_NOMEM. */
int img__orient_affine(const char *path, const char *src, float *f, const int64_t n[3],
                       double A[4][4], img_format fmt, img_vol *out, char *eb, size_t el);

#endif
