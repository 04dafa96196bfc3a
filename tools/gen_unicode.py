#!/usr/bin/env python3
"""Generates core/text/unicode_tables.c: the code-point classes the pre-tokenizer needs.

Writes sorted, merged [lo, hi] ranges tagged letter (L*), number (Nd, Nl, No), space
(White_Space), mark (M*) or punctuation (P*), plus two flat tables for U+0000..U+00FF: one
where marks and punctuation are "other" (what the GPT-2 patterns see) and one with them. Only
some pre-tokenizers tell marks (qwen35) or punctuation (falcon, deepseek-coder) from "other". Everything else is "other". The output
depends only on the input data, so it is deterministic.

General categories come from UnicodeData.txt in UNICODE_DIR (default: Debian's unicode-data
package, /usr/share/unicode, Unicode 15.0 on bookworm), or with --unicodedata2 from the PyPI
module of that name. White_Space always comes from UNICODE_DIR/PropList.txt (it has not changed
since Unicode 6.3).

The committed table is made with --unicodedata2 from unicodedata2==16.0.0, because Hugging Face
tokenizers (the reference) matches \\p{L} and \\p{N} with the Oniguruma it bundles, which is at
Unicode 16.0; with 15.0 tables 5,004 code points added in 15.1/16.0 split differently:

    pip install unicodedata2==16.0.0
    tools/gen_unicode.py --unicodedata2 > core/text/unicode_tables.c

usage: tools/gen_unicode.py [--unicodedata2] [UNICODE_DIR] > core/text/unicode_tables.c
"""
import os
import sys

CAT_OTHER, CAT_LETTER, CAT_NUMBER, CAT_SPACE, CAT_MARK, CAT_PUNCT = 0, 1, 2, 3, 4, 5
CAT_NAMES = {CAT_LETTER: "CORE__UCAT_LETTER", CAT_NUMBER: "CORE__UCAT_NUMBER",
             CAT_SPACE: "CORE__UCAT_SPACE", CAT_OTHER: "CORE__UCAT_OTHER",
             CAT_MARK: "CORE__UCAT_MARK", CAT_PUNCT: "CORE__UCAT_PUNCT"}


def general_category_class(gc):
    if gc.startswith("L"):
        return CAT_LETTER
    if gc in ("Nd", "Nl", "No"):
        return CAT_NUMBER
    if gc.startswith("M"):
        return CAT_MARK
    if gc.startswith("P"):
        return CAT_PUNCT
    return CAT_OTHER


def read_unicode_data(path):
    """Yields (lo, hi, class) for every assigned code point or First>/Last> range."""
    first = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split(";")
            if len(fields) < 3:
                continue
            cp, name, gc = int(fields[0], 16), fields[1], fields[2]
            if name.endswith(", First>"):
                first = cp
                continue
            if name.endswith(", Last>"):
                if first is None:
                    raise SystemExit("UnicodeData.txt: Last> without First> at %04X" % cp)
                yield first, cp, general_category_class(gc)
                first = None
                continue
            yield cp, cp, general_category_class(gc)


def read_white_space(path):
    version = None
    ranges = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if version is None and line.startswith("# PropList-"):
                version = line.strip()[len("# PropList-"):-len(".txt")]
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            cps, prop = [x.strip() for x in body.split(";")]
            if prop != "White_Space":
                continue
            lo, _, hi = cps.partition("..")
            ranges.append((int(lo, 16), int(hi or lo, 16)))
    return version, ranges


def read_unicodedata2():
    """Yields (cp, cp, class) for every code point, from the unicodedata2 module."""
    import unicodedata2
    for cp in range(0x110000):
        c = general_category_class(unicodedata2.category(chr(cp)))
        if c != CAT_OTHER:
            yield cp, cp, c


def build(unicode_dir, use_unicodedata2=False):
    cls = {}
    if use_unicodedata2:
        import unicodedata2
        source = "the unicodedata2 module"
        version = unicodedata2.unidata_version
        records = read_unicodedata2()
    else:
        source = "UnicodeData.txt"
        version = None
        records = read_unicode_data(os.path.join(unicode_dir, "UnicodeData.txt"))
    for lo, hi, c in records:
        if c != CAT_OTHER:
            for cp in range(lo, hi + 1):
                cls[cp] = c
    ws_version, ws = read_white_space(os.path.join(unicode_dir, "PropList.txt"))
    version = version or ws_version
    for lo, hi in ws:
        for cp in range(lo, hi + 1):
            if cls.get(cp, CAT_OTHER) != CAT_OTHER:
                raise SystemExit("U+%04X is both White_Space and another class" % cp)
            cls[cp] = CAT_SPACE
    ranges = []
    for cp in sorted(cls):
        c = cls[cp]
        if ranges and ranges[-1][1] == cp - 1 and ranges[-1][2] == c:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp, c])
    return version, source, cls, ranges


def main():
    args = sys.argv[1:]
    use_ud2 = "--unicodedata2" in args
    args = [a for a in args if a != "--unicodedata2"]
    unicode_dir = args[0] if args else "/usr/share/unicode"
    version, source, cls, ranges = build(unicode_dir, use_ud2)
    out = []
    w = out.append
    w("/* GENERATED by tools/gen_unicode.py from %s and PropList.txt\n" % source)
    w(" * (Unicode %s).\n" % version)
    w(" * Do not edit: regenerate as the generator's docstring says.\n")
    w(" * Letter = L*, number = Nd/Nl/No, space = White_Space, mark = M*, punctuation = P*;\n")
    w(" * all else is other. */\n")
    w('#include "core/text/unicode_internal.h"\n\n')
    w("/* clang-format off */\n")
    w('const char core__unicode_version[] = "%s";\n\n' % version)
    def latin1(name, comment, fold):
        w("/* %s */\n" % comment)
        w("const uint8_t %s[256] = {\n" % name)
        for row in range(0, 256, 16):
            cs = [cls.get(cp, CAT_OTHER) for cp in range(row, row + 16)]
            cs = [CAT_OTHER if fold and c in (CAT_MARK, CAT_PUNCT) else c for c in cs]
            w("    " + " ".join("%d," % c for c in cs) + "\n")
        w("};\n\n")
    latin1("core__unicode_latin1", "Class of U+0000..U+00FF, so Latin text never reaches the "
           "binary search;\n * punctuation is \"other\" here.", True)
    latin1("core__unicode_latin1_full", "The same with punctuation (U+0000..U+00FF has no mark).",
           False)
    w("/* Sorted, disjoint, maximal runs of one class (%d ranges). */\n" % len(ranges))
    w("const core__urange core__unicode_ranges[] = {\n")
    for lo, hi, c in ranges:
        w("    {0x%05X, 0x%05X, %s},\n" % (lo, hi, CAT_NAMES[c]))
    w("};\n\n")
    w("const size_t core__unicode_n_ranges = sizeof core__unicode_ranges / "
      "sizeof core__unicode_ranges[0];\n")
    w("/* clang-format on */\n")
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main()
