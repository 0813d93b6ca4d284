/* encoder.h - images, volumes and report text to vectors of the shared space.
 *
 *   enc_tokenizer *tok;
 *   char err[512];
 *   if (enc_tokenizer_load("models/default/vocab.txt", &o, &tok, err, sizeof err)) puts(err);
 *   enc_tokenizer_encode(tok, "8 mm nodule", 128, &ids);
 *   enc_tokenizer_free(tok);
 *
 * Built up in parts (see docs/encoder.md): safetensors weights
 * (encoder/safetensors.h), the BERT WordPiece tokenizer (encoder/tokenizer.h),
 * medical image input (encoder/image.h).  The models and backends follow.
 */
#ifndef MEDSEM_ENCODER_H
#define MEDSEM_ENCODER_H

#include <stddef.h>
#include <stdint.h>

#define ENC_ERRNO_MAP(XX)                                                     \
    XX(OK, "success")                                                         \
    XX(NOMEM, "out of memory")                                                \
    XX(IO, "input/output error")                                              \
    XX(INVAL, "invalid argument")                                             \
    XX(FORMAT, "malformed file")                                              \
    XX(UNSUPPORTED, "unsupported content")                                    \
    XX(TOOBIG, "input exceeds a size limit")                                  \
    XX(MISSING, "missing tensor or field")                                    \
    XX(SHAPE, "tensor shape does not match the configuration")

typedef enum {
#define ENC__ENUM(name, msg) ENC_##name,
    ENC_ERRNO_MAP(ENC__ENUM)
#undef ENC__ENUM
    ENC_NERR
} enc_errno;

const char *enc_strerror(int code);
const char *enc_errname(int code);

#endif
