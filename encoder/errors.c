/* errors.c - the enc_errno tables, generated from ENC_ERRNO_MAP in
 * encoder/encoder.h so a new code cannot be added without its message. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <stdio.h>

#include "encoder/encoder.h"
#include "encoder/internal.h"
#include "util/util.h"

const char *enc_strerror(int code)
{
    switch (code) {
#define ENC__STRERROR(name, msg)                                                                  \
    case ENC_##name:                                                                              \
        return msg;
        ENC_ERRNO_MAP(ENC__STRERROR)
#undef ENC__STRERROR
    default:
        return "unknown error";
    }
}

const char *enc_errname(int code)
{
    switch (code) {
#define ENC__ERRNAME(name, msg)                                                                   \
    case ENC_##name:                                                                              \
        return "ENC_" #name;
        ENC_ERRNO_MAP(ENC__ERRNAME)
#undef ENC__ERRNAME
    default:
        return "ENC_UNKNOWN";
    }
}
