"""Tokenizer folder layouts for the Rust tokenizer (worker/engine/tests/tokenizer_layouts.rs).

transformers has written CLIP tokenizer folders in several layouts over its versions; the engine
must load every one that transformers' CLIPTokenizer / CLIPTokenizerFast loads. This script saves
the two hand-written source folders of generate.py (fixtures/sd15, fixtures/pad_bang) with the
real libraries in each layout, then records the ids that transformers 5 (this repository's
.venv) gives for every folder on generate.py's prompt list:

  tf4_slow_legacy   transformers 4 CLIPTokenizer.save_pretrained(legacy_format=True):
                    vocab.json, merges.txt, special_tokens_map.json, tokenizer_config.json with
                    added_tokens_decoder (no tokenizer.json)
  tf4_fast          transformers 4 CLIPTokenizerFast.save_pretrained(): the legacy files plus
                    tokenizer.json (merges as "a b" strings)
  tf4_fast_json     transformers 4 CLIPTokenizerFast.save_pretrained(legacy_format=False):
                    tokenizer.json, tokenizer_config.json, special_tokens_map.json
  tf4_no_map        tf4_slow_legacy without special_tokens_map.json (special tokens only in
                    tokenizer_config.json's added_tokens_decoder)
  tf5               transformers 5 CLIPTokenizer.save_pretrained() (legacy_format=True and False
                    write the same two files): tokenizer.json (merges as pairs) and
                    tokenizer_config.json with plain-string special tokens
  tf5_json_only     only tokenizer.json. transformers then has no model_max_length (it reports
                    1e30), so the ids are taken with max_length = the source folder's length,
                    which is what the engine pads to (the text encoder's positions)

Run in two steps (the first with transformers 4 on the path):
  pip install --target /tmp/tf4 "transformers==4.57.3" "tokenizers<0.23" "huggingface_hub<1.0"
  PYTHONPATH=/tmp/tf4 .venv/bin/python tests/parity/tokenizer/layouts.py save4
  .venv/bin/python tests/parity/tokenizer/layouts.py
The second step writes the transformers 5 folders and fixtures/layouts/cases.json.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import transformers

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from generate import FIXTURES, prompts  # noqa: E402  (the same prompt list as the other cases)

OUT = FIXTURES / "layouts"
SOURCES = {"sd15": 77, "pad_bang": 16}


def fresh(path: pathlib.Path) -> pathlib.Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def save4() -> None:
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    assert transformers.__version__.startswith("4."), transformers.__version__
    for source in SOURCES:
        src = FIXTURES / source
        slow = CLIPTokenizer.from_pretrained(str(src))
        slow.save_pretrained(str(fresh(OUT / f"{source}-tf4_slow_legacy")), legacy_format=True)
        fast = CLIPTokenizerFast.from_pretrained(str(src))
        fast.save_pretrained(str(fresh(OUT / f"{source}-tf4_fast")))
        fast.save_pretrained(str(fresh(OUT / f"{source}-tf4_fast_json")), legacy_format=False)
        no_map = fresh(OUT / f"{source}-tf4_no_map")
        for file in (OUT / f"{source}-tf4_slow_legacy").iterdir():
            if file.name != "special_tokens_map.json":
                shutil.copy(file, no_map / file.name)
    (OUT / "transformers4.txt").write_text(transformers.__version__ + "\n")


def main() -> None:
    from transformers import CLIPTokenizer

    assert transformers.__version__.startswith("5."), transformers.__version__
    for source in SOURCES:
        tok = CLIPTokenizer.from_pretrained(str(FIXTURES / source))
        tok.save_pretrained(str(fresh(OUT / f"{source}-tf5")))
        only = fresh(OUT / f"{source}-tf5_json_only")
        shutil.copy(OUT / f"{source}-tf5" / "tokenizer.json", only / "tokenizer.json")
    out = {
        "description": (
            "input_ids = CLIPTokenizer.from_pretrained(folder)(prompt, padding='max_length', "
            "max_length=max_length, truncation=True).input_ids with transformers 5; max_length is "
            "the tokenizer's model_max_length, or fallback_max_length where the folder has none; "
            "files lists the folder's files"
        ),
        "transformers": transformers.__version__,
        "transformers4": (OUT / "transformers4.txt").read_text().strip(),
        "folders": {},
    }
    for folder in sorted(p for p in OUT.iterdir() if p.is_dir()):
        source = folder.name.split("-")[0]
        tok = CLIPTokenizer.from_pretrained(str(folder))
        has_length = tok.model_max_length < 10**6
        max_len = tok.model_max_length if has_length else SOURCES[source]
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
                }
            )
        out["folders"][folder.name] = {
            "files": sorted(p.name for p in folder.iterdir()),
            "model_max_length": max_len if has_length else None,
            "fallback_max_length": None if has_length else max_len,
            "pad_token_id": tok.pad_token_id,
            "cases": cases,
        }
    path = OUT / "cases.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(out['folders'])} folders")
    for name, data in out["folders"].items():
        print(f"  {name}: {data['files']} max_length={data['model_max_length']}")


if __name__ == "__main__":
    if sys.argv[1:] == ["save4"]:
        save4()
    else:
        main()
