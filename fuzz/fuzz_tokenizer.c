/* fuzz_tokenizer.c - WordPiece tokenization of arbitrary bytes (UTF-8
 * decoding, normalisation, punctuation, accents, Chinese characters) with
 * the test vocabulary (MEDSEM_FUZZ_VOCAB, default the source tree's
 * tests/fixtures/tokenizer/vocab.txt). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "encoder/encoder.h"

#ifndef MEDSEM_SRCDIR
#define MEDSEM_SRCDIR "."
#endif

static enc_tok *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *p = getenv("MEDSEM_FUZZ_VOCAB");
    char err[256];
    if (enc_tok_load(p ? p : MEDSEM_SRCDIR "/tests/fixtures/tokenizer/vocab.txt", NULL, &tok, err,
                     sizeof err))
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1), err[256];
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    int32_t ids[128], mask[128];
    size_t n;
    enc_tok_encode(tok, text, 128, ids, mask, &n, err, sizeof err);
    free(text);
    return 0;
}
