/* tokenizer.h - BERT WordPiece tokenization, as HF transformers' BertTokenizer.
 *
 *   enc_tok *t;  char err[512];  int32_t ids[128], mask[128];  size_t n;
 *   if (enc_tok_load("models/default/vocab.txt", NULL, &t, err, sizeof err)) puts(err);
 *   if (enc_tok_encode(t, "8 mm nodule", 128, ids, mask, &n, err, sizeof err)) puts(err);
 *   enc_tok_free(t);
 *
 * The ids are the ones the slow (Python) BertTokenizer of transformers 4.44
 * gives for tok(text, max_length=max_len, truncation=True,
 * padding="max_length"), for every valid UTF-8 text; tests/encoder/
 * test_tokenizer.c checks this against fixtures HF itself wrote.  The steps,
 * in HF's order:
 *   1. the strings [PAD] [UNK] [CLS] [SEP] [MASK], spelled exactly so, are
 *      cut out of the text and stand for their own ids (HF's added tokens);
 *   2. lower_case: every code point is lower-cased (Python's str.lower());
 *   3. U+0000, U+FFFD and every code point of category C* (control, format,
 *      private use, unassigned) except \t \n \r are dropped; \t \n \r and
 *      Zs become spaces;
 *   4. tokenize_chinese_chars: CJK ideographs become words of their own;
 *   5. NFC, then the text is split at white space (str.split());
 *   6. each word (except one spelled as a special token) is lower-cased
 *      (lower_case) and its accents stripped (NFD, then category Mn
 *      dropped) when strip_accents says so; then punctuation (ASCII
 *      !-/ :-@ [-` {-~ and category P*) is split off one code point at a
 *      time;
 *   7. WordPiece: greedy longest match first, "##" marking a continuation;
 *      a word longer than 100 code points, or with a piece the vocabulary
 *      lacks, becomes one [UNK].
 * The Unicode data (encoder/unicode_tables.h) covers all of Unicode 14.0 --
 * the version of Python 3.11's unicodedata, which HF uses -- not just some
 * scripts: case mapping, canonical (de)composition incl. Hangul, combining
 * classes and the character classes above.
 *
 * Where this differs from HF, on purpose:
 *   - text that is not valid UTF-8 is refused (ENC_INVAL, with the byte
 *     offset) rather than decoded by the caller first;
 *   - a vocabulary line holding a NUL byte or invalid UTF-8 is refused
 *     (HF fails on the latter too);
 *   - "[MASK]" in the text of a vocabulary without [MASK] gives [UNK]'s id
 *     (HF gives len(vocab), an id past the end of the embedding table);
 *   - enc_tok_vocab_size counts lines, where HF's len() counts distinct
 *     tokens; they differ only when the file repeats a token.
 */
#ifndef MEDSEM_ENCODER_TOKENIZER_H
#define MEDSEM_ENCODER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "encoder/encoder.h"

typedef struct enc_tok enc_tok;

typedef struct enc_tok_opts {
    int lower_case;             /* 1 (default): do_lower_case=True */
    int strip_accents;          /* -1 (default): as lower_case; 0 no; 1 yes */
    int tokenize_chinese_chars; /* 1 (default) */
} enc_tok_opts;

/* The defaults, which are HF's: uncased models. */
#define ENC_TOK_OPTS_INIT {1, -1, 1}

/* Words longer than this many code points become [UNK] (HF's
 * max_input_chars_per_word). */
#define ENC_TOK_MAX_WORD_CHARS 100

/* Reads vocab_path (vocab.txt: one token per line, the id is the line
 * number from 0; \n, \r\n and a lone \r all end a line, as in Python's
 * universal newlines; a repeated token keeps its last id, as in HF).
 * [PAD], [UNK], [CLS] and [SEP] must be present.  o == NULL means
 * ENC_TOK_OPTS_INIT; the options are copied.  On success *out is a new
 * tokenizer (free with enc_tok_free) and 0 is returned; else an ENC_* code,
 * with a message naming the file and, where it applies, the line in errbuf
 * (errbuf may be NULL when errlen is 0): ENC_IO (cannot read), ENC_FORMAT
 * (empty file, NUL byte, invalid UTF-8), ENC_MISSING (a required token),
 * ENC_INVAL (bad option), ENC_TOOBIG (over 1 GiB), ENC_NOMEM.
 * The tokenizer is read-only afterwards: any number of threads may use it at
 * once. */
int enc_tok_load(const char *vocab_path, const enc_tok_opts *o, enc_tok **out, char *errbuf,
                 size_t errlen);

/* Frees t and everything it owns, including the strings enc_tok_token
 * returned.  NULL is fine. */
void enc_tok_free(enc_tok *t);

/* Tokenizes the NUL-terminated UTF-8 text into [CLS] tokens... [SEP],
 * keeping only the first max_len - 2 tokens when there are more (HF's
 * truncation=True, max_length=max_len), then pads with [PAD]'s id.  ids and
 * mask must hold max_len entries each: mask[i] is 1 for the *n real tokens
 * (the specials included) and 0 for the padding.  max_len must be at least
 * 2.  Returns 0, or ENC_INVAL (invalid UTF-8, with its byte offset in
 * errbuf; max_len < 2) or ENC_NOMEM; ids, mask and *n are written only on
 * success.  Working memory is allocated per call and grows with the longest
 * run of text without white space; t is not modified. */
int enc_tok_encode(const enc_tok *t, const char *text, size_t max_len, int32_t *ids,
                   int32_t *mask, size_t *n, char *errbuf, size_t errlen);

/* The id of token (exact, NUL-terminated), or -1 when the vocabulary lacks
 * it.  For a repeated token, its last id. */
int enc_tok_id(const enc_tok *t, const char *token);

/* The number of ids: lines in the vocabulary file. */
size_t enc_tok_vocab_size(const enc_tok *t);

/* The token of id (the text of line id), or NULL when id is out of range.
 * Owned by t: valid until enc_tok_free(t). */
const char *enc_tok_token(const enc_tok *t, int32_t id);

#endif
