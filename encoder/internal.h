/* internal.h - encoder module internals shared between its files. */
#ifndef MEDSEM_ENCODER_INTERNAL_H
#define MEDSEM_ENCODER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/encoder.h"
#include "imageio/imageio.h"
#include "util/util.h"

/* Formats a one-line message into errbuf (may be NULL) and returns code: the
 * library's one error formatter under the module's name. */
#define enc__fail util_errf

#endif
