"""Tiny CLIP byte-level BPE tokenizer: learner + independent reference encoder.

The learner builds `vocab.json` / `merges.txt` in the exact layout of OpenAI CLIP's
tokenizer (256 byte symbols, the same 256 symbols with `</w>`, one entry per merge,
then `<|startoftext|>` and `<|endoftext|>`).

`ReferenceClipTokenizer` re-implements the original CLIP `simple_tokenizer` algorithm
(NFC, no ftfy fixes, no HTML unescaping) so the ids of transformers' tokenizer can be checked
against an independent implementation.
"""

from __future__ import annotations

import collections
import json

import unicodedata

import regex as re

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"

# Same pre-tokenisation pattern as CLIP (applied to lower-cased, whitespace-cleaned text).
PAT = re.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    re.IGNORECASE,
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode character table (in CLIP's order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


BYTE_ENCODER = bytes_to_unicode()


def whitespace_clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def pretokenize(text: str) -> list[str]:
    """NFC, collapse whitespace, lower-case, split with the CLIP pattern, map bytes to unicode symbols.

    (transformers' CLIPTokenizer normaliser is NFC -> `\\s+` to " " -> lowercase; the original CLIP
    gets NFC from ftfy.fix_text.  Neither transformers 5 nor this code unescapes HTML entities.)
    """
    text = whitespace_clean(unicodedata.normalize("NFC", text)).lower()
    return ["".join(BYTE_ENCODER[b] for b in tok.encode("utf-8")) for tok in PAT.findall(text)]


def learn_bpe(corpus: str, num_merges: int) -> list[tuple[str, str]]:
    """Plain BPE learner over CLIP pre-tokenised words (word-final symbol carries `</w>`).

    Deterministic: ties on frequency are broken by the lexicographically smallest pair.
    A pair whose concatenation already exists as a token (reachable by another split)
    is skipped so that every merge adds a distinct vocabulary entry.
    """
    word_freq = collections.Counter(pretokenize(corpus))
    words = {}
    for w in word_freq:
        syms = list(w)
        syms[-1] = syms[-1] + "</w>"
        words[w] = syms
    existing = set(BYTE_ENCODER.values()) | {c + "</w>" for c in BYTE_ENCODER.values()}
    merges: list[tuple[str, str]] = []
    banned: set[tuple[str, str]] = set()
    while len(merges) < num_merges:
        pairs = collections.Counter()
        for w, syms in words.items():
            f = word_freq[w]
            for a, b in zip(syms, syms[1:]):
                pairs[(a, b)] += f
        candidates = [(-c, p) for p, c in pairs.items() if p not in banned]
        if not candidates:
            break
        _, best = min(candidates)
        new = best[0] + best[1]
        if new in existing:
            banned.add(best)
            continue
        existing.add(new)
        merges.append(best)
        for w, syms in words.items():
            out, i = [], 0
            while i < len(syms):
                if i + 1 < len(syms) and (syms[i], syms[i + 1]) == best:
                    out.append(new)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[w] = out
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    symbols = list(BYTE_ENCODER.values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    assert len(set(vocab)) == len(vocab)
    return {tok: i for i, tok in enumerate(vocab)}


def write_vocab_files(folder, merges: list[tuple[str, str]]) -> dict[str, int]:
    vocab = build_vocab(merges)
    with open(f"{folder}/vocab.json", "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(f"{folder}/merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    return vocab


class ReferenceClipTokenizer:
    """Independent re-implementation of CLIP's BPE encode (NFC, no other ftfy fixes, no HTML unescaping)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], max_length: int):
        self.encoder = vocab
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.max_length = max_length
        self.cache = {BOS: BOS, EOS: EOS}

    def bpe(self, token: str) -> list[str]:
        if token in self.cache:
            return self.cache[token].split(" ")
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        self.cache[token] = " ".join(word)
        return word

    def encode(self, text: str) -> tuple[list[int], bool]:
        ids = []
        for tok in pretokenize(text):
            ids.extend(self.encoder[t] for t in self.bpe(tok))
        bos, eos = self.encoder[BOS], self.encoder[EOS]
        truncated = len(ids) > self.max_length - 2
        ids = [bos] + ids[: self.max_length - 2] + [eos]
        ids += [eos] * (self.max_length - len(ids))
        return ids, truncated
