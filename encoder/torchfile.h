/* torchfile.h - the tensors of a PyTorch checkpoint (torch.save, 1.6 and
 * later: a zip holding data.pkl and one file per storage), read without
 * Python and without running anything.
 *
 *   enc_torch *t;  char err[512];
 *   if (enc_torch_open("open_clip_pytorch_model.bin", &t, err, sizeof err)) puts(err);
 *   for (size_t i = 0; i < enc_torch_count(t); i++) puts(enc_torch_name(t, i));
 *   enc_torch_close(t);
 *
 * The pickle is read by a restricted machine that knows only what a state
 * dict uses: the opcodes that build dicts, lists, tuples, strings and
 * numbers, persistent ids for storages, and four callables:
 * collections.OrderedDict, torch._utils._rebuild_tensor_v2,
 * torch._utils._rebuild_parameter and the torch.*Storage types.  Any other
 * global, and any other opcode, is refused by name: nothing is looked up,
 * imported or executed.  Nested dicts ({"state_dict": {...}}) are
 * flattened with dots; values that are not tensors (an epoch number) are
 * left out and counted. */
#ifndef MEDSEM_ENCODER_TORCHFILE_H
#define MEDSEM_ENCODER_TORCHFILE_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/safetensors.h"

typedef struct enc_torch enc_torch;

/* Opens a checkpoint and reads its tensor table (the storages stay in
 * memory; a checkpoint is read whole).  Codes: ENC_IO, ENC_FORMAT (not a
 * zip, no data.pkl, a corrupt pickle, a tensor outside its storage),
 * ENC_UNSUPPORTED (a global or opcode a state dict does not use, the
 * legacy pre-1.6 format, big-endian data), ENC_TOOBIG, ENC_NOMEM; the
 * message names the file and, for the pickle, the byte offset. */
int enc_torch_open(const char *path, enc_torch **out, char *errbuf, size_t errlen);
/* The same from the file's bytes (copied). */
int enc_torch_open_mem(const void *data, size_t len, const char *name, enc_torch **out,
                       char *errbuf, size_t errlen);
void enc_torch_close(enc_torch *t); /* accepts NULL */

size_t enc_torch_count(const enc_torch *t);
const char *enc_torch_name(const enc_torch *t, size_t i);
/* Rank (<= ENC_ST_MAX_RANK), shape and the storage's dtype ("F32", "F16",
 * "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL"). */
int enc_torch_rank(const enc_torch *t, size_t i);
const int64_t *enc_torch_shape(const enc_torch *t, size_t i);
const char *enc_torch_dtype(const enc_torch *t, size_t i);
/* How many values of the pickle's dict were not tensors (left out). */
size_t enc_torch_skipped(const enc_torch *t);

/* Tensor i as contiguous float32 (row-major; strided views are gathered,
 * half and bfloat16 widened, integers converted when they are exact in
 * float32).  out holds the product of the shape.  Codes: ENC_INVAL (an
 * integer too large for float32). */
int enc_torch_get_f32(const enc_torch *t, size_t i, float *out, char *errbuf, size_t errlen);

/* Every tensor of a checkpoint into a safetensors file (float32), names
 * kept.  Codes as above and enc_st_write's. */
int enc_torch_to_safetensors(const char *in, const char *out, char *errbuf, size_t errlen);

#endif
