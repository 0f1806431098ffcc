#!/usr/bin/env python3
"""Reference numbers for the Rust schedulers (worker/engine/src/schedulers/), from the real diffusers ones.

Writes tests/parity/schedulers/fixtures/schedulers.json (deleting the folder first). For every case it
builds `Cls.from_config(SD15_CONFIG, **kwargs)` exactly as a user switching the pipeline's scheduler
would, calls `set_timesteps(steps)`, cuts the schedule with StableDiffusionInpaintPipeline.get_timesteps
(strength, `set_begin_index`), and runs a fake denoising loop shaped like the pipeline's:

    latents = noise * init_noise_sigma                      (strength == 1)
            = add_noise(x0, noise, timesteps[:1])            (strength <  1)
    for t in timesteps:
        inp = scale_model_input(latents, t)
        eps = inp * 0.1 + float(t) * 5e-5                    (the fake "UNet"; Rust computes the same)
        latents = step(eps, t, latents, [eta], generator)
        record latents and add_noise(x0, noise, next t)      (the 4-channel UNet's re-noising)

Stochastic steps use `torch.Generator().manual_seed(seed)` (a list of them for batch cases), as the
pipeline does. Everything is CPU fp32. Floats are written with 9 significant digits, enough to give back
the exact float32.

Run:  .venv/bin/python tests/parity/schedulers/generate.py     (a few seconds)
"""

from __future__ import annotations

import os

os.environ["DIFFUSERS_VERBOSITY"] = "error"

import json
import shutil
from pathlib import Path

import torch

import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)

OUT = Path(__file__).resolve().parent / "fixtures"

# SD-1.5's scheduler/scheduler_config.json, verbatim.
SD15_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# kind (the Rust SchedulerKind name) -> (class, the from_config kwargs the kind itself implies)
KINDS = {
    "pndm": (PNDMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
}

SHAPE = [1, 4, 3, 3]


def case_list():
    cases = []
    for kind in KINDS:
        etas = [0.0, 0.5] if kind == "ddim" else [0.0]
        for eta in etas:
            for steps in (4, 10):
                for strength in (1.0, 0.6):
                    cases.append(dict(kind=kind, steps=steps, strength=strength, eta=eta, extra={}, batch=1))
    # Config variants a model folder may carry (the extra keys go into the config, like a real JSON would).
    cases += [
        dict(kind="pndm", steps=4, strength=1.0, eta=0.0, extra={"prediction_type": "v_prediction"}, batch=1),
        dict(kind="pndm", steps=5, strength=1.0, eta=0.0, extra={"timestep_spacing": "trailing"}, batch=1),
        dict(kind="ddim", steps=4, strength=1.0, eta=0.0, extra={"prediction_type": "v_prediction"}, batch=1),
        dict(kind="ddim", steps=5, strength=0.6, eta=0.0, extra={"timestep_spacing": "trailing"}, batch=1),
        dict(kind="ddim", steps=4, strength=1.0, eta=0.0, extra={"clip_sample": True, "set_alpha_to_one": True},
             batch=1),
        dict(kind="ddim", steps=4, strength=1.0, eta=0.5, extra={}, batch=2),
        dict(kind="euler", steps=4, strength=1.0, eta=0.0, extra={"timestep_spacing": "leading"}, batch=1),
        dict(kind="euler", steps=4, strength=0.6, eta=0.0, extra={"prediction_type": "v_prediction"}, batch=1),
        dict(kind="euler", steps=6, strength=1.0, eta=0.0, extra={"use_karras_sigmas": True}, batch=1),
        dict(kind="euler_ancestral", steps=4, strength=1.0, eta=0.0, extra={"timestep_spacing": "leading"},
             batch=1),
        dict(kind="euler_ancestral", steps=4, strength=0.6, eta=0.0, extra={"prediction_type": "v_prediction"},
             batch=1),
        dict(kind="euler_ancestral", steps=4, strength=1.0, eta=0.0, extra={}, batch=2),
        dict(kind="dpmpp_2m", steps=4, strength=1.0, eta=0.0, extra={"prediction_type": "v_prediction"}, batch=1),
        dict(kind="dpmpp_2m", steps=20, strength=1.0, eta=0.0, extra={}, batch=1),
        dict(kind="dpmpp_2m", steps=6, strength=1.0, eta=0.0, extra={"timestep_spacing": "leading"}, batch=1),
        dict(kind="dpmpp_2m_karras", steps=20, strength=0.6, eta=0.0, extra={}, batch=1),
        dict(kind="dpmpp_2m", steps=5, strength=1.0, eta=0.0,
             extra={"final_sigmas_type": "sigma_min", "lower_order_final": False, "solver_type": "heun"}, batch=1),
        dict(kind="dpmpp_2m", steps=6, strength=1.0, eta=0.0, extra={"solver_order": 3}, batch=1),
        dict(kind="dpmpp_2m", steps=4, strength=1.0, eta=0.0, extra={"euler_at_final": True}, batch=1),
    ]
    return cases


def flat(t: torch.Tensor) -> list[float]:
    return [float(f"{v:.9g}") for v in t.detach().to(torch.float32).flatten().tolist()]


def get_timesteps(scheduler, num_inference_steps: int, strength: float):
    # StableDiffusionInpaintPipeline.get_timesteps, verbatim in behaviour.
    init_timestep = min(int(num_inference_steps * strength), num_inference_steps)
    t_start = max(num_inference_steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps, num_inference_steps - t_start


def run_case(index: int, case: dict) -> dict:
    cls, kind_kwargs = KINDS[case["kind"]]
    config = {**SD15_CONFIG, **case["extra"]}
    scheduler = cls.from_config(config, **kind_kwargs)
    steps = case["steps"]
    scheduler.set_timesteps(steps)
    full_timesteps = scheduler.timesteps.clone()
    full_sigmas = scheduler.sigmas.clone() if hasattr(scheduler, "sigmas") else None
    timesteps, n = get_timesteps(scheduler, steps, case["strength"])

    batch = case["batch"]
    shape = [batch] + SHAPE[1:]
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(1000 + index))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(2000 + index))
    seeds = [3000 + 10 * index + b for b in range(batch)]
    if batch == 1:
        generator = torch.Generator().manual_seed(seeds[0])
    else:
        generator = [torch.Generator().manual_seed(s) for s in seeds]

    init_noise_sigma = float(scheduler.init_noise_sigma)
    added = scheduler.add_noise(x0, noise, timesteps[:1].repeat(batch))
    latents = noise * scheduler.init_noise_sigma if case["strength"] == 1.0 else added

    step_kwargs = {}
    if case["kind"] == "ddim":
        step_kwargs["eta"] = case["eta"]
    if case["kind"] != "pndm":  # the pipeline passes generator wherever step() accepts one
        step_kwargs["generator"] = generator

    after_steps, renoised = [], []
    for i, t in enumerate(timesteps):
        inp = scheduler.scale_model_input(latents, t)
        eps = inp * 0.1 + float(t) * 5e-5
        latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]
        after_steps.append(flat(latents))
        if i < len(timesteps) - 1:
            renoised.append(flat(scheduler.add_noise(x0, noise, torch.tensor([timesteps[i + 1]]).repeat(batch))))

    return dict(
        name=f"{index:02d}_{case['kind']}_s{steps}_str{case['strength']}_eta{case['eta']}_b{batch}"
        + "".join(f"_{k}={v}" for k, v in case["extra"].items()),
        kind=case["kind"],
        config=config,
        steps=steps,
        strength=case["strength"],
        eta=case["eta"],
        shape=shape,
        seeds=seeds,
        full_timesteps=[float(v) for v in full_timesteps.tolist()],
        full_sigmas=flat(full_sigmas) if full_sigmas is not None else None,
        timesteps=[float(v) for v in timesteps.tolist()],
        num_steps_after_strength=n,
        init_noise_sigma=init_noise_sigma,
        x0=flat(x0),
        noise=flat(noise),
        add_noise=flat(added),
        after_steps=after_steps,
        renoised=renoised,
    )


def randn_checks() -> list[dict]:
    # torch.Generator streams that the Rust side must reproduce with tch::manual_seed + Tensor::randn:
    # sizes below 16 (scalar Box-Muller path) and at or above 16 (vectorised path), consecutive draws.
    checks = []
    for seed, shapes in ((0, [[5], [40], [3]]), (1234567, [[1, 4, 3, 3], [2, 7], [16]])):
        g = torch.Generator().manual_seed(seed)
        draws = [flat(torch.randn(s, generator=g)) for s in shapes]
        checks.append(dict(seed=seed, shapes=shapes, draws=draws))
    return checks


def main() -> None:
    torch.set_num_threads(1)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    cases = [run_case(i, c) for i, c in enumerate(case_list())]
    doc = dict(
        generator="tests/parity/schedulers/generate.py",
        versions=dict(torch=torch.__version__, diffusers=diffusers.__version__),
        fake_model="eps = scale_model_input(latents, t) * 0.1 + float(t) * 5e-5",
        randn_checks=randn_checks(),
        cases=cases,
    )
    path = OUT / "schedulers.json"
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {path} ({path.stat().st_size} bytes, {len(cases)} cases)")


if __name__ == "__main__":
    main()
