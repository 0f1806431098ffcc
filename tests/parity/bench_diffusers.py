"""Times diffusers' StableDiffusionInpaintPipeline on one parity case, for the engine's benchmark.

    .venv/bin/python tests/parity/bench_diffusers.py CASE_DIR REPEATS

Loads the case's model once (not timed), runs the case REPEATS times after one warm-up run, and
prints one JSON line: {"seconds": [...], "threads": N}. CPU, fp32, as generate.py ran it.
"""

import json
import pathlib
import sys
import time

import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler, StableDiffusionInpaintPipeline)
from PIL import Image

SCHEDULERS = {c.__name__: c for c in (DDIMScheduler, DPMSolverMultistepScheduler,
                                      EulerAncestralDiscreteScheduler, EulerDiscreteScheduler,
                                      PNDMScheduler)}


def main() -> None:
    case_dir = pathlib.Path(sys.argv[1])
    repeats = int(sys.argv[2])
    case = json.loads((case_dir / "case.json").read_text())
    model = case_dir.parents[1] / "models" / case["model"]
    pipe = StableDiffusionInpaintPipeline.from_pretrained(model, safety_checker=None,
                                                          requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = SCHEDULERS[case["scheduler"]].from_config(pipe.scheduler.config,
                                                               **case["scheduler_kwargs"])
    image = Image.open(case_dir / "image.png").convert("RGB")
    mask = Image.open(case_dir / "mask.png")

    def run() -> None:
        generators = [torch.Generator().manual_seed(s) for s in case["seeds"]]
        pipe(prompt=case["prompt"], negative_prompt=case["negative_prompt"], image=image,
             mask_image=mask, width=case["width"], height=case["height"],
             num_inference_steps=case["num_inference_steps"],
             guidance_scale=case["guidance_scale"], strength=case["strength"],
             num_images_per_prompt=case["num_images_per_prompt"], generator=generators,
             eta=case.get("eta", 0.0))

    with torch.no_grad():
        run()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
