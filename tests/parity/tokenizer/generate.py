"""Expected CLIP token ids for the Rust tokenizer parity test (worker/engine/src/tokenizer.rs).

Builds two small tokenizer folders under fixtures/ from one tiny CLIP byte-level BPE vocabulary
(vocab.json + merges.txt, the layout of SD-1.5's tokenizer folder, no tokenizer.json):

- sd15:     SD-1.5 style configs (AddedToken dicts, pad `<|endoftext|>`, model_max_length 77);
- pad_bang: SD-2 style configs (pad token `!`, which is a no-split added token) and
            model_max_length 16, so that truncation is exercised on short prompts.

then runs transformers' `CLIPTokenizer.from_pretrained(folder)` as diffusers calls it,
`tokenizer(prompt, padding="max_length", max_length=model_max_length, truncation=True)`,
over a broad prompt list and writes the ids, the truncated flag and the un-truncated length
(BOS and EOS included) to fixtures/cases_transformers<MAJOR>.json.

transformers >= 5 (this repository's .venv):   CLIPTokenizer is backed by `tokenizers`
    (NFC, \\s+ -> " ", lower-case normaliser) -> cases_transformers5.json
transformers 4.x without ftfy (slow tokenizer): BasicTokenizer clean-up
    -> cases_transformers4.json.  Run with a transformers 4 install first on the path, e.g.
    pip install --target /tmp/tf4 "transformers==4.57.3" "tokenizers<0.23" "huggingface_hub<1.0"
    PYTHONPATH=/tmp/tf4 .venv/bin/python tests/parity/tokenizer/generate.py

The vocabulary is copied from tests/parity/fixtures/models/tiny-sd-a/tokenizer when fixtures/vocab
does not exist yet; afterwards it is kept so that both runs use the same files.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import transformers
from transformers import CLIPTokenizer

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
VOCAB_DIR = FIXTURES / "vocab"
SOURCE = HERE.parent / "fixtures" / "models" / "tiny-sd-a" / "tokenizer"


def added(content: str) -> dict:
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def special_map(pad: str) -> dict:
    return {
        "bos_token": {k: v for k, v in added("<|startoftext|>").items() if k != "__type"},
        "eos_token": {k: v for k, v in added("<|endoftext|>").items() if k != "__type"},
        "pad_token": pad,
        "unk_token": {k: v for k, v in added("<|endoftext|>").items() if k != "__type"},
    }


def config(pad: str, max_len: int) -> dict:
    return {
        "add_prefix_space": False,
        "bos_token": added("<|startoftext|>"),
        "do_lower_case": True,
        "eos_token": added("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": max_len,
        "name_or_path": "tiny-clip",
        "pad_token": pad,
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added("<|endoftext|>"),
    }


FOLDERS = {"sd15": ("<|endoftext|>", 77), "pad_bang": ("!", 16)}


def build_folders() -> None:
    if not VOCAB_DIR.exists():
        VOCAB_DIR.mkdir(parents=True)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(SOURCE / name, VOCAB_DIR / name)
    for name, (pad, max_len) in FOLDERS.items():
        folder = FIXTURES / name
        folder.mkdir(parents=True, exist_ok=True)
        for file in ("vocab.json", "merges.txt"):
            shutil.copy(VOCAB_DIR / file, folder / file)
        (folder / "tokenizer_config.json").write_text(json.dumps(config(pad, max_len), indent=2) + "\n")
        (folder / "special_tokens_map.json").write_text(json.dumps(special_map(pad), indent=2) + "\n")


def prompts(max_len: int) -> list[str]:
    base = [
        "a photo of a cat",
        "A Painting Of A RED Fox, highly-detailed!!!",
        "wow! hello!! world!!! (masterpiece:1.2), [best quality]",
        "remove the person; fill with grass (and flowers) ... ok?",
        "3 apples, 12 oranges and 2024 bananas: 3.14159, 1,000,000 and ½ ² ٣",
        "café naïve résumé Ångström ÉCOLE Straße",
        "e\u0301 decomposed accent (NFD) vs \u00e9",
        "emoji 🐱🔥 and ✨ sparkles 👩‍👩‍👧 flags 🇫🇷",
        "日本語のテキスト and 中文字符 and 한국어 and Ελληνικά ΟΔΟΣ",
        "   lots   of \t whitespace \n\n here   ",
        "\ttab\tseparated\r\nwindows\u00a0nbsp\u3000ideographic\u2028line sep",
        "tom &amp; jerry &lt;b&gt; &quot;quoted&quot; &#39;x&#39;",
        "don't it's we'll they're I'M you've he'd DON'T",
        "''s 'ss '' 'S quotes `back` \"double\"",
        "<|startoftext|> literal special tokens <|endoftext|>",
        "a<|endoftext|>b !<|endoftext|>! <|ENDOFTEXT|> <|startoftext|><|endoftext|>",
        "zero\u200bwidth soft\u00adhyphen control\u0007bell null\u0000byte repl\ufffdchar",
        "mixed-case URL http://Example.com/a_b?c=d#e and email me@x.org",
        "ÀÉÎÕÜ Ǆ ǅ ﬁ ligature İstanbul",
        "",
        " ",
        "\n\t ",
        "!",
        "a very long prompt about a house, a tree, a river, a bridge, a mountain, a cloud, the sun, "
        "a boat, a bird, a horse, a house, a tree, a river, a bridge, a mountain, a cloud, the sun, "
        "a boat, a bird, a horse, and many more things that do not fit in the context window at all",
    ]
    # "a" is one token: max_len - 2 of them fill the window exactly, one more truncates.
    base.append(" ".join(["a"] * (max_len - 2)))
    base.append(" ".join(["a"] * (max_len - 1)))
    base.append(" ".join(["a"] * (max_len - 3)) + " !!")
    return base


def main() -> None:
    major = int(transformers.__version__.split(".")[0])
    build_folders()
    out = {
        "description": (
            "input_ids = CLIPTokenizer.from_pretrained(folder)(prompt, padding='max_length', "
            "max_length=model_max_length, truncation=True).input_ids; untruncated_length = "
            "len(tokenizer(prompt).input_ids) (BOS and EOS included); truncated = "
            "untruncated_length > model_max_length"
        ),
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "folders": {},
    }
    for name in FOLDERS:
        tok = CLIPTokenizer.from_pretrained(str(FIXTURES / name))
        assert not getattr(tok, "fix_text", None), "ftfy is installed: uninstall it for these fixtures"
        max_len = tok.model_max_length
        cases = []
        for prompt in prompts(max_len):
            ids = tok(prompt, padding="max_length", max_length=max_len, truncation=True).input_ids
            full = tok(prompt).input_ids
            cases.append(
                {
                    "prompt": prompt,
                    "input_ids": ids,
                    "truncated": len(full) > max_len,
                    "untruncated_length": len(full),
                    "tokens": tok.convert_ids_to_tokens(full),
                }
            )
        out["folders"][name] = {"model_max_length": max_len, "cases": cases}
    path = FIXTURES / f"cases_transformers{major}.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path} ({sum(len(f['cases']) for f in out['folders'].values())} cases)")


if __name__ == "__main__":
    main()
