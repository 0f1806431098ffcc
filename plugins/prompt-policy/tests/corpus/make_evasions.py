#!/usr/bin/env python3
"""Generates evasions.tsv from violations.tsv: every violation, rewritten by one obfuscation
(chosen in rotation per script, seeded, so the file is reproducible). The transforms apply to
every long-enough word of the prompt, not to the words the lists contain, so they are not
tuned to the lists.

    python3 plugins/prompt-policy/tests/corpus/make_evasions.py

Columns of both files: category, language, kind, prompt (tab-separated, one header line).
"""
import csv
import os
import random
import re
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
rng = random.Random(12)

CYRILLIC_LOOKALIKE = {"a": "а", "e": "е", "o": "о", "c": "с", "p": "р", "x": "х", "y": "у", "i": "і"}
LATIN_LOOKALIKE = {v: k for k, v in CYRILLIC_LOOKALIKE.items()}
LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
VOWELS = "aeiou"
ZW = "\u200b"


def is_cjk(ch):
    return any(
        lo <= ord(ch) <= hi
        for lo, hi in [(0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7AF), (0x3400, 0x4DBF)]
    )


def words(prompt):
    return re.findall(r"\w+|\W+", prompt)


def map_long_words(prompt, fn, min_len=5):
    return "".join(fn(w) if w.isalpha() and len(w) >= min_len else w for w in words(prompt))


def split_word(w):
    cut = rng.randint(2, len(w) - 2)
    return w[:cut] + " " + w[cut:]


def misspell(w):
    i = rng.randint(1, len(w) - 2)
    op = rng.choice(["delete", "swap", "double", "insert", "substitute"])
    if op == "delete":
        return w[:i] + w[i + 1:]
    if op == "swap":
        return w[:i] + w[i + 1] + w[i] + w[i + 2:]
    if op == "double":
        return w[:i] + w[i] + w[i:]
    if op == "insert":
        return w[:i] + rng.choice(VOWELS) + w[i:]
    vowels = [k for k, c in enumerate(w) if c in VOWELS and 0 < k]
    if not vowels:
        return w[:i] + w[i + 1:]
    k = rng.choice(vowels)
    return w[:k] + rng.choice([v for v in VOWELS if v != w[k]]) + w[k + 1:]


def leet(w):
    return "".join(LEET[c] if c in LEET and rng.random() < 0.5 else c for c in w)


def phonetic(w):
    w = w.replace("ph", "f").replace("ck", "kk")
    w = re.sub(r"c(?=[aou])", "k", w)
    w = re.sub(r"s$", "z", w)
    w = w.replace("y", "i") if rng.random() < 0.5 else w.replace("i", "y", 1)
    return w


def homoglyph_latin(prompt):
    return "".join(
        CYRILLIC_LOOKALIKE[c] if c in CYRILLIC_LOOKALIKE and rng.random() < 0.5 else c for c in prompt
    )


def homoglyph_cyrillic(prompt):
    return "".join(LATIN_LOOKALIKE[c] if c in LATIN_LOOKALIKE and rng.random() < 0.6 else c for c in prompt)


def zero_width(prompt):
    out = []
    for w in words(prompt):
        if w.isalpha() and len(w) >= 2:
            cut = rng.randint(1, len(w) - 1)
            w = w[:cut] + ZW + w[cut:]
        out.append(w)
    return "".join(out)


def fullwidth(prompt):
    return "".join(
        chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() and rng.random() < 0.6 else c for c in prompt
    )


def tokens(prompt):
    return [w for w in re.findall(r"\w+", prompt)]


def camel_case(prompt):
    return "".join(t[:1].upper() + t[1:] for t in tokens(prompt))


def snake_case(prompt):
    return rng.choice(["_", "-"]).join(tokens(prompt))


def spaced_letters(prompt):
    sep = rng.choice(["-", ".", " "])
    between = "  " if sep == " " else " "
    return between.join(sep.join(t) for t in tokens(prompt))


def spaced_chars(prompt):
    return " ".join(c for c in prompt if not c.isspace())


LATIN = [
    ("split_word", lambda p: map_long_words(p, split_word)),
    ("camel_case", camel_case),
    ("snake_kebab", snake_case),
    ("spaced_letters", spaced_letters),
    ("misspelling", lambda p: map_long_words(p, misspell)),
    ("leet_misspelling", lambda p: map_long_words(p, lambda w: leet(misspell(w)))),
    ("phonetic", lambda p: map_long_words(p, phonetic, 4)),
    ("homoglyph", homoglyph_latin),
    ("zero_width_fullwidth", lambda p: fullwidth(zero_width(p))),
]
CYRILLIC = [
    ("split_word", lambda p: map_long_words(p, split_word)),
    ("spaced_letters", spaced_letters),
    ("misspelling", lambda p: map_long_words(p, misspell)),
    ("homoglyph", homoglyph_cyrillic),
    ("zero_width", zero_width),
]
CJK = [("spaced_chars", spaced_chars), ("zero_width", lambda p: ZW.join(p))]


def main():
    with open(os.path.join(HERE, "violations.tsv"), encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    turn = {}
    out = []
    for category, language, _kind, prompt in rows:
        prompt = unicodedata.normalize("NFC", prompt)
        if any(is_cjk(c) for c in prompt):
            family = CJK
        elif language == "ru":
            family = CYRILLIC
        else:
            family = LATIN
        # English prompts get every Latin transform; others rotate per language.
        key = (id(family), language)
        k = turn.get(key, 0)
        turn[key] = k + 1
        name, fn = family[k % len(family)]
        evasion = fn(prompt if name not in ("misspelling", "leet_misspelling", "phonetic", "split_word") else prompt.lower())
        if evasion != prompt:
            out.append((category, language, name, evasion))
    with open(os.path.join(HERE, "evasions.tsv"), "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
        w.writerow(["category", "language", "kind", "prompt"])
        w.writerows(out)
    print(f"{len(out)} evasions")


if __name__ == "__main__":
    main()
