#!/usr/bin/env python3
"""Convert a pickle single-file Stable Diffusion checkpoint (.ckpt/.pt/.pth) to .safetensors.

    .venv/bin/python ops/convert-ckpt.py sd-v1-5-inpainting.ckpt sd-v1-5-inpainting.safetensors

The worker never reads pickles (a pickle is a program; see worker/engine/src/single_file.rs).
This runs once, offline, with the project's venv:

- `torch.load(..., weights_only=True)`: PyTorch's restricted unpickler, which rebuilds tensors and
  plain containers only and refuses any other object (no code from the file runs). A checkpoint
  that needs more (full training state with arbitrary objects) is refused; nothing is retried
  without the restriction.
- the tensors of `state_dict` (LDM/Lightning checkpoints) or of the top-level dict are written
  unchanged, names included (the CompVis/LDM names that the worker converts), each as its own
  contiguous copy (safetensors refuses shared storage).
- `--half` stores floating-point tensors as float16 (half the size; the worker converts to the
  precision it runs in anyway). `--drop-ema` leaves out the `model_ema.*` copy, which the worker
  ignores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", type=Path, help="pickle checkpoint (.ckpt, .pt, .pth)")
    parser.add_argument("output", type=Path, help="where to write the .safetensors file")
    parser.add_argument("--half", action="store_true", help="store float tensors as float16")
    parser.add_argument("--drop-ema", action="store_true", help="leave out model_ema.* tensors")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    args = parser.parse_args()

    if args.output.suffix != ".safetensors":
        parser.error("the output name must end in .safetensors")
    if args.output.exists() and not args.force:
        parser.error(f"{args.output} exists (use --force to overwrite)")

    try:
        loaded = torch.load(args.input, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report whatever the restricted unpickler refused
        print(f"{args.input}: not loadable with weights_only=True: {e}", file=sys.stderr)
        return 1
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        print(f"{args.input}: no state dict inside (got {type(loaded).__name__})", file=sys.stderr)
        return 1

    tensors: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            skipped.append(f"{name} ({type(value).__name__})")
            continue
        if args.drop_ema and name.startswith("model_ema."):
            continue
        t = value.detach()
        if args.half and t.is_floating_point():
            t = t.to(torch.float16)
        tensors[name] = t.contiguous().clone()
    if not tensors:
        print(f"{args.input}: no tensors found", file=sys.stderr)
        return 1

    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(tensors.items())), str(args.output), metadata={"format": "pt"})
    print(f"{args.output}: {len(tensors)} tensors written")
    if skipped:
        print(f"skipped {len(skipped)} non-tensor entries: {', '.join(skipped[:10])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
