/* errors.c - the enc_errno tables, generated from ENC_ERRNO_MAP in
 * encoder/encoder.h so a new code cannot be added without its message. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include "encoder/internal.h"

#define ENC__MSG(name, msg) msg,
#define ENC__NAME(name, msg) "ENC_" #name,
static const char *const enc_msgs[] = {ENC_ERRNO_MAP(ENC__MSG)};
static const char *const enc_names[] = {ENC_ERRNO_MAP(ENC__NAME)};

const char *enc_strerror(int code) { return util_errtab(enc_msgs, ENC_NERR, code, "unknown error"); }
const char *enc_errname(int code) { return util_errtab(enc_names, ENC_NERR, code, "ENC_UNKNOWN"); }
