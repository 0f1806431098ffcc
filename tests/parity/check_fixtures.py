#!/usr/bin/env python3
"""Re-runs every fixture case from its case.json alone and asserts the committed outputs are reproduced.

Checks, per case: output_<i>.png pixels identical (output_type="pil", as recorded), outputs.npy identical
(output_type="np"), and the generators end in the state the documented `random_draws` imply.
Also re-tokenises tokenizer_cases.json and, if present, loads the single-file checkpoint.

Run:  .venv/bin/python tests/parity/check_fixtures.py [case_name ...]
Exit status 0 = everything reproduced bit-exactly.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DIFFUSERS_VERBOSITY"] = "error"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
)
from transformers import CLIPTokenizer

torch.use_deterministic_algorithms(True)
torch.set_num_threads(2)
diffusers.utils.logging.disable_progress_bar()

FIX = Path(__file__).resolve().parent / "fixtures"
SCHEDULERS = {c.__name__: c for c in (PNDMScheduler, DDIMScheduler, EulerDiscreteScheduler,
                                      EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler)}


def generators(case):
    if case["generator_mode"] == "single":
        return torch.Generator("cpu").manual_seed(case["seeds"][0])
    return [torch.Generator("cpu").manual_seed(s) for s in case["seeds"]]


def run(pipe, case, case_dir, output_type):
    base = pipe.scheduler
    pipe.scheduler = SCHEDULERS[case["scheduler"]].from_config(base.config, **case["scheduler_kwargs"])
    got_cfg = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    gens = generators(case)
    try:
        out = pipe(
            prompt=case["prompt"], negative_prompt=case["negative_prompt"],
            image=Image.open(case_dir / case["image"]), mask_image=Image.open(case_dir / case["mask"]),
            height=case["height"], width=case["width"], num_inference_steps=case["num_inference_steps"],
            guidance_scale=case["guidance_scale"], strength=case["strength"], eta=case["eta"],
            num_images_per_prompt=case["num_images_per_prompt"], generator=gens, output_type=output_type,
            padding_mask_crop=case["padding_mask_crop"],
        ).images
    finally:
        pipe.scheduler = base
    return out, gens, got_cfg


def check_case(pipes, case_dir: Path) -> list[str]:
    case = json.loads((case_dir / "case.json").read_text())
    if case["model"] not in pipes:
        p = StableDiffusionInpaintPipeline.from_pretrained(
            str(FIX / "models" / case["model"]), safety_checker=None, requires_safety_checker=False,
            local_files_only=True)
        p.set_progress_bar_config(disable=True)
        pipes[case["model"]] = p
    pipe = pipes[case["model"]]
    errors = []

    images, gens, got_cfg = run(pipe, case, case_dir, "pil")
    want_cfg = case["scheduler_config"]
    for k, v in want_cfg.items():
        g = got_cfg.get(k)
        if json.loads(json.dumps(g, default=str)) != v and str(g) != str(v):
            errors.append(f"scheduler config {k}: {g!r} != {v!r}")
    assert len(images) == len(case["outputs"])
    for im, fn in zip(images, case["outputs"]):
        want = np.asarray(Image.open(case_dir / fn))
        got = np.asarray(im)
        if want.shape != got.shape or not np.array_equal(want, got):
            d = np.abs(want.astype(int) - got.astype(int)).max() if want.shape == got.shape else "shape"
            errors.append(f"{fn} differs (max abs diff {d})")

    # random-number consumption matches the documented draws
    replay = [torch.Generator("cpu").manual_seed(s) for s in case["seeds"]]
    for d in case["random_draws"]:
        torch.randn(d["shape"], generator=replay[d["generator"]])
    for g, r in zip(gens if isinstance(gens, list) else [gens], replay):
        if not torch.equal(g.get_state(), r.get_state()):
            errors.append("generator state after the run differs from the documented random_draws")

    if case["outputs_npy"] is None:
        return errors
    np_images, _, _ = run(pipe, case, case_dir, "np")
    if not np.array_equal(np.load(case_dir / case["outputs_npy"]), np_images):
        errors.append("outputs.npy differs")
    return errors


def check_tokenizers() -> list[str]:
    data = json.loads((FIX / "tokenizer_cases.json").read_text())
    errors = []
    for model, entry in data["models"].items():
        tok = CLIPTokenizer.from_pretrained(str(FIX / "models" / model / "tokenizer"))
        for c in entry["cases"]:
            ids = tok(c["prompt"], padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
            if list(ids) != c["input_ids"]:
                errors.append(f"tokenizer {model}: {c['prompt']!r}")
    return errors


def check_single_file() -> list[str]:
    kmap_file = FIX / "ckpt_key_map.json"
    if not kmap_file.exists():
        return []
    km = json.loads(kmap_file.read_text())
    folder = FIX / "models" / km["model"]
    sf = StableDiffusionInpaintPipeline.from_single_file(
        str(FIX / km["checkpoint"]), config=str(folder), local_files_only=True, safety_checker=None,
        requires_safety_checker=False)
    ref = StableDiffusionInpaintPipeline.from_pretrained(str(folder), safety_checker=None,
                                                         requires_safety_checker=False, local_files_only=True)
    errors = []
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(sf, name).state_dict(), getattr(ref, name).state_dict()
        if set(a) != set(b) or any(not torch.equal(a[k], b[k]) for k in a):
            errors.append(f"single-file {name} differs from the folder model")
    return errors


def main():
    only = set(sys.argv[1:])
    pipes = {}
    failures = 0
    for case_dir in sorted((FIX / "cases").iterdir()):
        if only and case_dir.name not in only:
            continue
        errs = check_case(pipes, case_dir)
        print(f"{'OK  ' if not errs else 'FAIL'} {case_dir.name}" + "".join(f"\n     {e}" for e in errs), flush=True)
        failures += bool(errs)
    if not only:
        for label, fn in (("tokenizer_cases.json", check_tokenizers), ("single-file checkpoint", check_single_file)):
            errs = fn()
            print(f"{'OK  ' if not errs else 'FAIL'} {label}" + "".join(f"\n     {e}" for e in errs))
            failures += bool(errs)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
