#!/usr/bin/env python3
"""Writes encoder/unicode_tables.h, the Unicode data behind encoder/tokenizer.c.

Rerun by hand from the repository root (the build never runs it; the output is
committed):

    python3 encoder/gen_unicode_tables.py

The tables come from this Python's unicodedata module, so they describe the
Unicode version that Python ships (the header records it).  HF's BertTokenizer
reads the same module, so tokenizer fixtures must be made with a Python of the
same Unicode version (tests/fixtures/make_tokenizer_fixtures.py checks).

The tables cover all of Unicode (every plane), not only the BMP: BERT's
cleaning step drops every code point of category C* -- unassigned ones
included -- and NFC maps the CJK compatibility ideographs of plane 2, so a
BMP-only table would give different tokens for emoji and rare scripts.  Run
lengths keep it to about 5,900 entries, 40 KiB of const data in the object.

Tables (all sorted, binary-searched):
  enc__uc_flags   runs (start << 8 | flags) of the character classes BERT uses
  enc__uc_ascii   the same classes for U+0000-U+007F, indexed directly
  enc__uc_ccc     runs (start << 8 | ccc) of the canonical combining class
  enc__uc_lower   str.lower() for single code points, as runs of one delta
  enc__uc_lower_multi  the code points whose str.lower() is two code points
  enc__uc_decomp  one level of canonical decomposition (Hangul excluded: it is
                  algorithmic); applied recursively gives NFD
  enc__uc_comp    indices into enc__uc_decomp of the primary composites, sorted
                  by their (d0, d1) pair, for NFC composition
"""
import os
import sys
import unicodedata as ud

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "unicode_tables.h")
NCP = 0x110000
SBASE, LBASE, VBASE, TBASE = 0xAC00, 0x1100, 0x1161, 0x11A7
SCOUNT = 11172

F_CTRL, F_WS, F_PUNCT, F_MN, F_SPACE = 1, 2, 4, 8, 16


def is_surrogate(c):
    return 0xD800 <= c <= 0xDFFF


def flags(c):
    ch = chr(c)
    cat = ud.category(ch)
    f = 0
    # BERT's _is_control: any C* category except the three it treats as
    # whitespace.  U+0000 and U+FFFD are dropped by _clean_text separately.
    if cat.startswith("C") and ch not in "\t\n\r":
        f |= F_CTRL
    # BERT's _is_whitespace.
    if ch in " \t\n\r" or cat == "Zs":
        f |= F_WS
    # BERT's _is_punctuation: four ASCII ranges (which take in $ + < = > ^ `
    # | ~) plus every P* category.
    if 33 <= c <= 47 or 58 <= c <= 64 or 91 <= c <= 96 or 123 <= c <= 126 or cat.startswith("P"):
        f |= F_PUNCT
    if cat == "Mn":
        f |= F_MN
    # str.split() with no argument, which whitespace_tokenize uses.
    if ch.isspace():
        f |= F_SPACE
    return f


def runs(fn):
    out, prev = [], None
    for c in range(NCP):
        v = fn(c)
        if v != prev:
            out.append((c, v))
            prev = v
    return out


def lower_runs():
    single, multi = [], []
    for c in range(NCP):
        if is_surrogate(c):
            continue
        lo = chr(c).lower()
        assert lo.lower() == lo, hex(c)  # lowering twice changes nothing
        if len(lo) == 1:
            if ord(lo) != c:
                single.append((c, ord(lo) - c))
        else:
            assert len(lo) == 2, hex(c)
            multi.append((c, ord(lo[0]), ord(lo[1])))
    # Greedy runs of one delta, stride 1 (A-Z) or 2 (upper/lower pairs).
    out, i = [], 0
    while i < len(single):
        c, d = single[i]
        stride = 1
        if i + 1 < len(single) and single[i + 1][1] == d and single[i + 1][0] - c == 2:
            stride = 2
        j = i
        while j + 1 < len(single) and single[j + 1][1] == d and single[j + 1][0] - single[j][0] == stride:
            j += 1
        out.append((c, single[j][0], d, stride))
        i = j + 1
    # The C lookup finds the last run starting at or below a code point, so
    # runs must not interleave.
    for a, b in zip(out, out[1:]):
        assert a[1] < b[0]
    table = {c: c + d for c, d in single}
    for first, last, d, stride in out:
        for c in range(first, last + 1):
            want = table.get(c, c)
            got = c + d if (c - first) % stride == 0 else c
            assert got == want, hex(c)
    return out, multi


def decompositions():
    decomp, comp = [], []
    for c in range(NCP):
        if is_surrogate(c) or SBASE <= c < SBASE + SCOUNT:
            continue
        s = ud.decomposition(chr(c))
        if not s or s.startswith("<"):
            continue  # none, or a compatibility mapping
        parts = [int(p, 16) for p in s.split()]
        assert 1 <= len(parts) <= 2, hex(c)
        d0, d1 = parts[0], parts[1] if len(parts) == 2 else 0
        if len(parts) == 2 and ud.normalize("NFC", chr(d0) + chr(d1)) == chr(c):
            comp.append(len(decomp))  # a primary composite
        decomp.append((c, d0, d1))
    comp.sort(key=lambda i: (decomp[i][1], decomp[i][2]))
    return decomp, comp


def check_assumptions(fl, decomp, comp):
    """What tokenizer.c relies on beyond the tables themselves."""
    flag = {}
    for (c0, f), nxt in zip(fl, fl[1:] + [(NCP, 0)]):
        for c in range(c0, nxt[0]):
            flag[c] = f
    nfd_max = 0
    spaces = [c for c in range(NCP) if flag[c] & F_SPACE]
    for c in range(NCP):
        if is_surrogate(c):
            continue
        d = ud.normalize("NFD", chr(c))
        nfd_max = max(nfd_max, len(d))
        # Text is split into words before NFC; that is exact only if no
        # character that survives cleaning decomposes into a space.
        if not flag[c] & (F_CTRL | F_WS | F_SPACE):
            assert not any(ch.isspace() for ch in d), hex(c)
    # ... and if the spaces left after cleaning (U+0020 and the isspace()
    # characters cleaning keeps) never reorder or compose with neighbours.
    kept = [0x20] + [c for c in spaces if not flag[c] & (F_CTRL | F_WS)]
    for c in kept:
        assert ud.combining(chr(c)) == 0
        assert ud.decomposition(chr(c)) == "", hex(c)
        assert not any(c in (e[1], e[2]) for e in decomp), hex(c)
    for i in comp:
        assert not chr(decomp[i][0]).isspace()
    # Lower-casing never yields a space, a control or a CJK ideograph.
    for c in range(NCP):
        if is_surrogate(c):
            continue
        for ch in chr(c).lower():
            if ord(ch) != c:
                assert not (flag[ord(ch)] & (F_CTRL | F_WS | F_SPACE)), hex(c)
    # The Hangul constants tokenizer.c uses.
    assert ud.normalize("NFD", chr(SBASE)) == chr(LBASE) + chr(VBASE)
    assert ud.normalize("NFD", chr(SBASE + SCOUNT - 1)) == chr(0x1112) + chr(0x1175) + chr(0x11C2)
    return nfd_max


def emit(f, items, per_line, fmt):
    for i in range(0, len(items), per_line):
        f.write("    " + " ".join(fmt(x) for x in items[i:i + per_line]) + "\n")


def main():
    fl = runs(flags)
    cc = runs(lambda c: ud.combining(chr(c)))
    lo, lo_multi = lower_runs()
    decomp, comp = decompositions()
    nfd_max = check_assumptions(fl, decomp, comp)
    assert len(decomp) < 65536
    # tokenizer.c skips the composition search below this second code point.
    comp_min2 = min(decomp[i][2] for i in comp)

    with open(OUT, "w", encoding="ascii", newline="\n") as f:
        f.write(f"""\
/* unicode_tables.h - Unicode {ud.unidata_version} data for the BERT tokenizer.
 *
 * GENERATED by encoder/gen_unicode_tables.py from Python {sys.version.split()[0]}'s
 * unicodedata; do not edit.  Included only by encoder/tokenizer.c.  The table
 * layouts are described in the script.
 */
#ifndef MEDSEM_ENCODER_UNICODE_TABLES_H
#define MEDSEM_ENCODER_UNICODE_TABLES_H

#include <stdint.h>

#define ENC__UC_VERSION "{ud.unidata_version}"

/* Character classes, as BERT's BasicTokenizer defines them. */
#define ENC__UC_CTRL 1u  /* category C* except \\t \\n \\r: dropped */
#define ENC__UC_WS 2u    /* space, \\t, \\n, \\r, Zs: becomes a space */
#define ENC__UC_PUNCT 4u /* ASCII 33-47 58-64 91-96 123-126 and P*: split off */
#define ENC__UC_MN 8u    /* Mn: removed by accent stripping */
#define ENC__UC_SPACE 16u /* str.isspace(): separates words */

/* The longest full canonical decomposition, in code points. */
#define ENC__UC_NFD_MAX {nfd_max}

/* No primary composite (Hangul aside) has a second code point below this. */
#define ENC__UC_COMP_MIN2 0x{comp_min2:X}

typedef struct enc__uc_lower_run {{
    uint32_t first, last; /* code points first, first + stride, ... <= last */
    int32_t delta;        /* lower = cp + delta */
    uint32_t stride;
}} enc__uc_lower_run;

typedef struct enc__uc_decomp_entry {{
    uint32_t cp, d0, d1; /* cp -> d0 d1 (d1 == 0: a singleton) */
}} enc__uc_decomp_entry;

""")
        f.write(f"/* {len(fl)} runs of (first code point << 8 | class bits). */\n")
        f.write("static const uint32_t enc__uc_flags[] = {\n")
        emit(f, fl, 9, lambda r: f"0x{(r[0] << 8) | r[1]:X},")
        f.write("};\n\n")
        f.write("/* The class bits of U+0000-U+007F. */\n")
        f.write("static const uint8_t enc__uc_ascii[128] = {\n")
        emit(f, [flags(c) for c in range(128)], 16, lambda v: f"{v},")
        f.write("};\n\n")
        f.write(f"/* {len(cc)} runs of (first code point << 8 | canonical combining class). */\n")
        f.write("static const uint32_t enc__uc_ccc[] = {\n")
        emit(f, cc, 9, lambda r: f"0x{(r[0] << 8) | r[1]:X},")
        f.write("};\n\n")
        f.write(f"/* {len(lo)} runs covering every single-code-point str.lower() change. */\n")
        f.write("static const enc__uc_lower_run enc__uc_lower[] = {\n")
        emit(f, lo, 4, lambda r: f"{{0x{r[0]:X},0x{r[1]:X},{r[2]},{r[3]}}},")
        f.write("};\n\n")
        f.write("/* str.lower() of these is two code points (SpecialCasing.txt). */\n")
        f.write("static const uint32_t enc__uc_lower_multi[][3] = {\n")
        emit(f, lo_multi, 4, lambda r: f"{{0x{r[0]:04X}, 0x{r[1]:04X}, 0x{r[2]:04X}}},")
        f.write("};\n\n")
        f.write(f"/* {len(decomp)} canonical decompositions, one level, by code point. */\n")
        f.write("static const enc__uc_decomp_entry enc__uc_decomp[] = {\n")
        emit(f, decomp, 4, lambda r: f"{{0x{r[0]:X},0x{r[1]:X},0x{r[2]:X}}},")
        f.write("};\n\n")
        f.write(f"/* {len(comp)} primary composites: indices into enc__uc_decomp by (d0, d1). */\n")
        f.write("static const uint16_t enc__uc_comp[] = {\n")
        emit(f, comp, 16, lambda i: f"{i},")
        f.write("};\n\n#endif\n")
    print("wrote", OUT, f"(Unicode {ud.unidata_version}: {len(fl)} class runs, {len(cc)} ccc runs, "
          f"{len(lo)} lower runs, {len(decomp)} decompositions, {len(comp)} composites)")


if __name__ == "__main__":
    main()
