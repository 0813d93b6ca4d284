/* safetensors.h - reading (and writing) model weights in the safetensors format.
 *
 *   enc_st *st;
 *   char err[512];
 *   if (enc_st_open("models/default/model.safetensors", &st, err, sizeof err)) puts(err);
 *   const int64_t shape[2] = {768, 768};
 *   const float *w;
 *   if (enc_st_get(st, "vit.blocks.0.attn.proj.weight", 2, shape, &w, err, sizeof err)) puts(err);
 *   enc_st_close(st);   (w is gone with st)
 *
 * The format (github.com/huggingface/safetensors): an 8-byte little-endian
 * header length N, N bytes of JSON mapping each tensor name to
 * {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the
 * data that follow the header), an optional "__metadata__" object of
 * strings, then the tensor bytes.  Everything the file says is checked at
 * open.  Functions return an ENC_* code (encoder/encoder.h); messages go to a
 * caller-supplied errbuf (may be NULL) and start with the file's path.
 */
#ifndef MEDSEM_ENCODER_SAFETENSORS_H
#define MEDSEM_ENCODER_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/encoder.h"

#define ENC_ST_MAX_RANK 8
/* Headers larger than this are refused (ENC_TOOBIG), as the reference
 * implementation does: a real header is a few hundred KB at most. */
#define ENC_ST_MAX_HEADER 100000000u

typedef struct enc_st enc_st;

/* Element types.  Only the float types can be read; a tensor of any other
 * dtype (I64 position ids, U8 masks, F64, ...) is still listed, so a lookup
 * can say "unsupported dtype" rather than "missing". */
enum { ENC_ST_F32, ENC_ST_F16, ENC_ST_BF16, ENC_ST_OTHER };

typedef struct enc_st_info {
    int dtype;                       /* ENC_ST_* */
    int rank;                        /* 0..ENC_ST_MAX_RANK */
    int64_t shape[ENC_ST_MAX_RANK];  /* rank entries used, the rest 0 */
    size_t nelem;                    /* product of the shape (1 for rank 0) */
} enc_st_info;

/* Maps path read-only and validates the header against the file: length,
 * JSON syntax (UTF-8), every entry's dtype, shape and data_offsets, sizes
 * against shapes, ranges inside the data and not overlapping, names unique.
 * On success *out owns the mapping until enc_st_close; on failure *out is
 * untouched and errbuf says which tensor and field were wrong.
 * Codes: ENC_IO (open/stat/mmap), ENC_NOMEM, ENC_FORMAT (malformed file),
 * ENC_TOOBIG (header over ENC_ST_MAX_HEADER), ENC_UNSUPPORTED (rank over 8).
 * The file must not be truncated while open (as with any mmap reader). */
int enc_st_open(const char *path, enc_st **out, char *errbuf, size_t errlen);

/* Unmaps the file and frees everything st owns, including every pointer
 * enc_st_get and enc_st_name returned.  Accepts NULL. */
void enc_st_close(enc_st *st);

/* Number of tensors (the "__metadata__" entry is not one). */
size_t enc_st_count(const enc_st *st);

/* Name of tensor i (i < enc_st_count), in strcmp order.  Owned by st and
 * valid until enc_st_close. */
const char *enc_st_name(const enc_st *st, size_t i);

/* Fills *out with the dtype and shape of tensor name.  ENC_OK, or
 * ENC_MISSING (out untouched) when there is no such tensor.  O(log n). */
int enc_st_info_get(const enc_st *st, const char *name, enc_st_info *out);

/* Returns in *data the float32 values of tensor name, which must have
 * exactly rank dimensions equal to shape[0..rank) (shape may be NULL when
 * rank is 0, a scalar).  Row-major, nelem floats.
 *
 * F32 data that lie 4-byte aligned in memory are returned as a pointer into
 * the read-only mapping (no copy); anything else (F16, BF16, unaligned F32) is
 * converted once into a copy that st owns, and later calls return the same
 * copy.  Either way the pointer is valid until enc_st_close; do not free or
 * write through it.
 *
 * Codes: ENC_MISSING (no such tensor), ENC_UNSUPPORTED (not F32/F16/BF16),
 * ENC_SHAPE (the shape differs; the message shows both), ENC_INVAL (rank out
 * of range), ENC_NOMEM.  *data is written only on success.
 *
 * Not thread-safe (it may fill the copy cache): load weights from one thread,
 * then share the returned pointers read-only. */
int enc_st_get(enc_st *st, const char *name, int rank, const int64_t *shape,
               const float **data, char *errbuf, size_t errlen);

/* Writes n float32 tensors to a new safetensors file at path: names[i] with
 * ranks[i] dimensions shapes[i][0..ranks[i]) and data[i] (the product of the
 * shape floats; may be NULL when that is 0), in the given order.  The header
 * carries "__metadata__": {"format": "pt"} (what Python loaders expect) and
 * is padded with spaces to a multiple of 8 bytes, so every tensor starts
 * 8-byte aligned.  Written to a temporary file next to path, synced, then
 * renamed over path, so readers see the old file or the whole new one.
 * Nothing is kept: the arrays are only read during the call.
 * Names must be non-empty UTF-8; JSON escaping is done here.
 * Codes: ENC_INVAL (empty, non-UTF-8, duplicate or reserved name, bad rank
 * or shape),
 * ENC_IO, ENC_NOMEM. */
int enc_st_write(const char *path, size_t n, const char *const *names, const int *ranks,
                 const int64_t (*shapes)[ENC_ST_MAX_RANK], const float *const *data,
                 char *errbuf, size_t errlen);

#endif
