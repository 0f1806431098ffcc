#!/usr/bin/env python3
"""Reference data for the Rust safety checker (plugins/safety-checker/), from the real diffusers
`StableDiffusionSafetyChecker` and transformers' `CLIPImageProcessor`.

Writes tests/parity/safety/fixtures/ (deleting it first):

  checker-a/  hidden 32, 2 layers, 4 heads, patch 8, image 32, projection 16, quick_gelu;
              safety_checker/model.safetensors in **fp16** (as SD-1.5 publishes it);
              feature_extractor: shortest_edge 32, crop 32 (resize only, crop trims the long side).
  checker-b/  hidden 24, 3 layers, 2 heads, patch 4, image 24, projection 8, gelu, eps 1e-6;
              weights in **fp32**; feature_extractor: shortest_edge 30, crop 24 (crop on both axes).
              Its config.json also carries a legacy `vision_config_dict` (as SD-1.5's does).
  images/     test images of several sizes and aspects (PNG, RGB).
  expected.json  per checker and image: cos_dist (17), special_cos_dist (3), the adjusted and rounded
              concept_scores / special_scores exactly as diffusers computes them, bad_concepts,
              special_care, has_nsfw_concepts (from the checker's own forward), the thresholds.
  pixels-<checker>.safetensors  the preprocessed pixel tensors [3, crop, crop] per image (float32).

How thresholds are chosen: random weights give cosine similarities with little spread, so some
concept embeddings are set to (a noisy copy of) an image's embedding; then every threshold is placed
in a gap between the images' cosine values (away from the 0.001 rounding boundaries), so that some
images are flagged and others are not. One image of each checker triggers a special-care concept,
and one of its concepts sits 0.004-0.006 below its threshold: flagged only through the 0.01 bump.

Deterministic: CPU, fp32 inference, torch.manual_seed. Without torchvision installed (the case here)
transformers 5.24's `CLIPImageProcessor` resolves to `CLIPImageProcessorPil` (PIL bicubic resize);
the generator records the class it used.

Run:  .venv/bin/python tests/parity/safety/generate.py     (a few seconds)
"""

from __future__ import annotations

import os

os.environ["DIFFUSERS_VERBOSITY"] = "error"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"
os.environ["HF_HUB_OFFLINE"] = "1"

import json
import shutil
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers.pipelines.stable_diffusion.safety_checker import (
    StableDiffusionSafetyChecker,
    cosine_distance,
)
from transformers import CLIPConfig, CLIPImageProcessor

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "fixtures"

torch.set_num_threads(2)
torch.set_grad_enabled(False)
transformers.utils.logging.disable_progress_bar()
diffusers.utils.logging.disable_progress_bar()
torch.use_deterministic_algorithms(True)

CHECKERS = {
    "checker-a": dict(
        vision=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            patch_size=8,
            image_size=32,
            hidden_act="quick_gelu",
        ),
        projection_dim=16,
        dtype=torch.float16,
        size=32,
        crop=32,
        legacy_dict=False,
        seed=1,
    ),
    "checker-b": dict(
        vision=dict(
            hidden_size=24,
            intermediate_size=40,
            num_hidden_layers=3,
            num_attention_heads=2,
            patch_size=4,
            image_size=24,
            hidden_act="gelu",
            layer_norm_eps=1e-6,
        ),
        projection_dim=8,
        dtype=torch.float32,
        size=30,
        crop=24,
        legacy_dict=True,
        seed=2,
    ),
}

# (name, width, height): square, portrait, landscape, smaller than every crop, odd sizes, large.
IMAGES = [
    ("square-32", 32, 32),
    ("portrait-40x64", 40, 64),
    ("landscape-96x48", 96, 48),
    ("tiny-17x13", 17, 13),
    ("thin-20x50", 20, 50),
    ("odd-101x77", 101, 77),
    ("large-200x150", 200, 150),
    ("wide-150x31", 150, 31),
]


def make_image(index: int, width: int, height: int) -> Image.Image:
    """A deterministic RGB image: smooth gradients, a rectangle, stripes and noise."""
    rng = np.random.default_rng(100 + index)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 127 + 120 * np.sin(x / (3 + index) + index)
    g = 255 * (y / max(height - 1, 1)) * (0.3 + 0.1 * index)
    b = 127 + 120 * np.cos((x + y) / (5 + 2 * index))
    img = np.stack([r, g, b], axis=-1)
    x0, y0 = width // (2 + index % 3), height // (3 + index % 2)
    img[y0 : y0 + height // 3, x0 : x0 + width // 4] = rng.integers(0, 256, 3)
    if index % 2:
        img[::4] = 255 - img[::4]
    img += rng.normal(0, 12 + 4 * index, img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), "RGB")


def embeds_of(checker: StableDiffusionSafetyChecker, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        pooled = checker.vision_model(pixels)[1]
        return checker.visual_projection(pooled)


def choose_threshold(cos: np.ndarray, flagged_wanted: int) -> float | None:
    """A threshold (fp16-representable) between two of the sorted cosine values that leaves
    `flagged_wanted` images above it, with every image at least 0.003 from it; None if no gap."""
    values = np.sort(cos.astype(np.float64))[::-1]
    if flagged_wanted == 0:
        candidates = [values[0] + 0.05]
    else:
        candidates = [(values[flagged_wanted - 1] + values[flagged_wanted]) / 2]
    for c in candidates:
        t = float(torch.tensor(c, dtype=torch.float16).float())
        if np.min(np.abs(cos.astype(np.float64) - t)) >= 0.003 and (
            (cos > t).sum() == flagged_wanted
        ):
            return t
    return None


def diffusers_scores(special_cos: np.ndarray, cos: np.ndarray, special_w, concept_w):
    """Per image, the dictionaries that StableDiffusionSafetyChecker.forward builds (same numpy
    float32 arithmetic: float32 - Python float, + adjustment, round(x, 3))."""
    out = []
    for i in range(cos.shape[0]):
        res = {"special_scores": [], "special_care": [], "concept_scores": [], "bad_concepts": []}
        adjustment = 0.0
        for j in range(special_cos.shape[1]):
            s = round(special_cos[i][j] - special_w[j] + adjustment, 3)
            res["special_scores"].append(float(s))
            if s > 0:
                res["special_care"].append(j)
                adjustment = 0.01
        for j in range(cos.shape[1]):
            c = round(cos[i][j] - concept_w[j] + adjustment, 3)
            res["concept_scores"].append(float(c))
            if c > 0:
                res["bad_concepts"].append(j)
        out.append(res)
    return out


def build_checker(name: str, spec: dict, images: list[Image.Image]) -> dict:
    folder = OUT / name
    sc_dir, fe_dir = folder / "safety_checker", folder / "feature_extractor"

    processor = CLIPImageProcessor(
        size={"shortest_edge": spec["size"]},
        crop_size={"height": spec["crop"], "width": spec["crop"]},
    )
    processor.save_pretrained(fe_dir)
    # Reload as the pipeline does.
    processor = CLIPImageProcessor.from_pretrained(fe_dir)
    pixels = processor(images, return_tensors="pt").pixel_values.float()

    torch.manual_seed(spec["seed"])
    config = CLIPConfig(vision_config=spec["vision"], projection_dim=spec["projection_dim"])
    checker = StableDiffusionSafetyChecker(config).eval()
    with torch.no_grad():
        # Non-trivial layer norms and embeddings (post_init leaves LayerNorms at 1/0).
        for pname, p in checker.named_parameters():
            if "layer_norm" in pname or "layrnorm" in pname:
                p.add_(torch.randn_like(p) * 0.2)
        # Larger random weights than the initialiser's (std 0.02), so that the images' embeddings
        # differ more than the shared component that a random tower gives all of them.
        for pname, p in checker.named_parameters():
            if pname.endswith("weight") and p.dim() >= 2:
                p.copy_(torch.randn_like(p) * (1.5 / p.shape[1] ** 0.5))
        emb = embeds_of(checker, pixels)
        n = len(images)
        proj = spec["projection_dim"]
        centred = emb - emb.mean(0, keepdim=True)
        unit = centred / centred.norm(dim=1, keepdim=True)
        concepts = torch.randn(17, proj) / proj**0.5
        # Concepts 0..7 point near image i's distinctive direction, so they separate images.
        for i in range(8):
            concepts[i] = unit[i % n] + torch.randn(proj) * (0.3 / proj**0.5)
        # Concept 16 also follows image 2: it is the one only the special-care bump flags.
        concepts[16] = unit[2] + torch.randn(proj) * (0.4 / proj**0.5)
        special = torch.randn(3, proj) / proj**0.5
        special[1] = unit[2] + torch.randn(proj) * (0.2 / proj**0.5)
        checker.concept_embeds.copy_(concepts)
        checker.special_care_embeds.copy_(special)

    def save(model):
        model = model.to(spec["dtype"])
        model.save_pretrained(sc_dir, safe_serialization=True)
        reloaded = StableDiffusionSafetyChecker.from_pretrained(sc_dir, torch_dtype=torch.float32).eval()
        return reloaded

    # First save (weights rounded to the stored dtype), then measure cosines on the reloaded model.
    checker = save(checker)
    emb = embeds_of(checker, pixels)
    special_cos = cosine_distance(emb, checker.special_care_embeds).float().numpy()
    cos = cosine_distance(emb, checker.concept_embeds).float().numpy()

    # Special care: flag exactly image 2 on concept 1; the others never.
    special_w = [float(special_cos[:, 0].max()) + 0.2, None, float(special_cos[:, 2].max()) + 0.2]
    special_w[1] = choose_threshold(special_cos[:, 1], 1)
    assert special_w[1] is not None and special_cos[:, 1].argmax() == 2, special_cos[:, 1]
    special_w = [float(torch.tensor(w, dtype=torch.float16).float()) for w in special_w]

    concept_w = []
    # How many images each concept flags (the ones nearest to it): a few images stay clear.
    wanted = [1, 0, 1, 0, 2, 1, 0, 0] + [0] * 9
    for j in range(17):
        t = None
        for k in [wanted[j], 0]:
            t = choose_threshold(cos[:, j], k)
            if t is not None:
                break
        concept_w.append(t if t is not None else float(cos[:, j].max()) + 0.2)
    # Concept 16 for image 2: 0.005 below threshold, so only the special-care bump flags it;
    # every other image must stay clear of it.
    t16 = float(torch.tensor(float(cos[2, 16]) + 0.005, dtype=torch.float16).float())
    gap = cos[2, 16] - t16
    others = np.delete(cos[:, 16], 2) - t16
    if -0.0085 < gap < -0.0015 and (others < -0.003).all():
        concept_w[16] = t16
    else:
        raise SystemExit(f"{name}: cannot place the special-care-only concept (gap {gap}, {others})")

    # Every unrounded score (with the bump where it applies) at least 0.002 from zero, so float
    # noise between implementations cannot flip a flag.
    bump = np.array([0.01 if i == 2 else 0.0 for i in range(n)])[:, None]
    margins = np.abs(cos - np.array(concept_w)[None, :] + bump)
    assert margins.min() >= 0.002, (name, margins.min(), np.unravel_index(margins.argmin(), margins.shape))
    assert np.abs(special_cos - np.array(special_w)[None, :]).min() >= 0.002

    with torch.no_grad():
        checker.special_care_embeds_weights.copy_(torch.tensor(special_w))
        checker.concept_embeds_weights.copy_(torch.tensor(concept_w))
    checker = save(checker)
    if spec["legacy_dict"]:
        cfg_path = sc_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["vision_config_dict"] = {
            k: v for k, v in spec["vision"].items() if k != "layer_norm_eps"
        } | {"layer_norm_eps": spec["vision"].get("layer_norm_eps", 1e-5)}
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        checker = StableDiffusionSafetyChecker.from_pretrained(sc_dir, torch_dtype=torch.float32).eval()
        # The published SD-1.5 file names the tower `vision_model.vision_model.*` (transformers 4's
        # nesting); transformers 5 saves `vision_model.*` and maps the old names on load. Store the
        # published layout here and check that transformers loads it unchanged.
        before = {k: v.clone() for k, v in checker.state_dict().items()}
        path = sc_dir / "model.safetensors"
        tensors = load_file(path)
        save_file(
            {
                (f"vision_model.{k}" if k.startswith("vision_model.") else k): v
                for k, v in tensors.items()
            },
            path,
            metadata={"format": "pt"},
        )
        checker = StableDiffusionSafetyChecker.from_pretrained(sc_dir, torch_dtype=torch.float32).eval()
        after = checker.state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), "nested names not loaded"

    # Reference run: the checker's own forward on the whole batch (as the pipeline calls it) ...
    np_images = [np.asarray(im, dtype=np.float32) / 255.0 for im in images]
    _, has_nsfw = checker(clip_input=pixels, images=np_images)
    # ... and the intermediate values with the same code paths.
    emb = embeds_of(checker, pixels)
    special_cos = cosine_distance(emb, checker.special_care_embeds).cpu().float().numpy()
    cos = cosine_distance(emb, checker.concept_embeds).cpu().float().numpy()
    special_w_loaded = [checker.special_care_embeds_weights[j].item() for j in range(3)]
    concept_w_loaded = [checker.concept_embeds_weights[j].item() for j in range(17)]
    results = diffusers_scores(special_cos, cos, special_w_loaded, concept_w_loaded)
    mine = [len(r["bad_concepts"]) > 0 for r in results]
    assert mine == list(has_nsfw), (mine, has_nsfw)
    assert any(has_nsfw) and not all(has_nsfw), has_nsfw
    assert 16 in results[2]["bad_concepts"] and results[2]["special_care"] == [1]

    save_file(
        {im_name: pixels[i].contiguous() for i, (im_name, _, _) in enumerate(IMAGES)},
        OUT / f"pixels-{name}.safetensors",
    )
    return {
        "processor_class": type(processor).__name__,
        "weights_dtype": str(spec["dtype"]).replace("torch.", ""),
        "crop": spec["crop"],
        "size": spec["size"],
        "concept_thresholds": concept_w_loaded,
        "special_thresholds": special_w_loaded,
        "images": {
            im_name: {
                "cos_dist": [float(v) for v in cos[i]],
                "special_cos_dist": [float(v) for v in special_cos[i]],
                "concept_scores": results[i]["concept_scores"],
                "special_scores": results[i]["special_scores"],
                "bad_concepts": results[i]["bad_concepts"],
                "special_care": results[i]["special_care"],
                "has_nsfw": bool(has_nsfw[i]),
            }
            for i, (im_name, _, _) in enumerate(IMAGES)
        },
    }


# Both pass orders of Pillow 13 (vertical first when the height shrinks by more than twice the
# width): e.g. 150x11, 40x10 and 50x5 go vertical first, 30x20 and 7x5 horizontal first.
RESIZE_CASES = [
    (7, 5), (20, 30), (53, 100), (150, 11), (26, 37), (106, 74), (53, 3), (1, 37),
    (40, 10), (30, 20), (50, 5), (20, 36),
]


def resize_cases() -> None:
    """PIL's own resize of a noise image (the hardest input for fixed-point rounding) to several
    sizes, BICUBIC and BILINEAR: `resize-cases.safetensors`, uint8 [H, W, 3] per case."""
    rng = np.random.default_rng(7)
    src = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), "RGB")
    src.save(OUT / "images" / "noise-53x37.png")
    out = {}
    for w, h in RESIZE_CASES:
        for name, filt in [("bicubic", Image.Resampling.BICUBIC), ("bilinear", Image.Resampling.BILINEAR)]:
            out[f"{name}-{w}x{h}"] = torch.from_numpy(np.asarray(src.resize((w, h), resample=filt)).copy())
    save_file(out, OUT / "resize-cases.safetensors")


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "images").mkdir(parents=True)
    images = []
    for index, (name, w, h) in enumerate(IMAGES):
        im = make_image(index, w, h)
        im.save(OUT / "images" / f"{name}.png")
        images.append(Image.open(OUT / "images" / f"{name}.png").convert("RGB"))
    resize_cases()
    expected = {
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
        "image_order": [name for name, _, _ in IMAGES],
        "checkers": {name: build_checker(name, spec, images) for name, spec in CHECKERS.items()},
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    for name, data in expected["checkers"].items():
        flags = [data["images"][i]["has_nsfw"] for i in expected["image_order"]]
        print(name, data["processor_class"], "nsfw:", flags)


if __name__ == "__main__":
    main()
