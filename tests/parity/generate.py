#!/usr/bin/env python3
"""Deterministic generator of the inpainting parity fixtures.

Writes everything under tests/parity/fixtures/ (deleting what was there):

  models/<name>/            tiny random-weight StableDiffusionInpaintPipeline folders (diffusers layout)
  models/<name>.ckpt.safetensors   one model as a CompVis/LDM single-file checkpoint (see ldm_ckpt.py)
  tokenizer_cases.json      reference CLIP token ids per model tokenizer
  cases/<case>/             case.json, image.png, mask.png, output_<i>.png, outputs.npy, intermediates.safetensors
  manifest.json             versions + sha256 of every fixture file

Run:  .venv/bin/python tests/parity/generate.py      (CPU, fp32, ~1 minute)
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DIFFUSERS_VERBOSITY"] = "error"
os.environ["TRANSFORMERS_VERBOSITY"] = "error"

import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import diffusers
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import clip_bpe  # noqa: E402
import ldm_ckpt  # noqa: E402

FIXTURES = HERE / "fixtures"

torch.use_deterministic_algorithms(True)
torch.set_num_threads(2)
diffusers.utils.logging.disable_progress_bar()

VERSIONS = {
    "python": sys.version.split()[0],
    "torch": torch.__version__,
    "diffusers": diffusers.__version__,
    "transformers": transformers.__version__,
    "numpy": np.__version__,
    "Pillow": Image.__version__,
}

# --------------------------------------------------------------------------------------------
# Tokenizer corpus (built in, so the learned merges never change)
# --------------------------------------------------------------------------------------------
CORPUS = """
a photo of a cat sitting on a wooden table next to a window with the morning light
a painting of a red fox in the snow, highly detailed, trending on artstation
a portrait of an old man with a white beard, studio lighting, sharp focus
a beautiful landscape with mountains and a lake at sunset, the sky is orange and purple
the quick brown fox jumps over the lazy dog while the cat watches from the garden
an astronaut riding a horse on the moon, digital art, cinematic composition
a bowl of fresh fruit on the kitchen counter, apples, oranges and bananas
remove the person from the background and fill it with green grass and flowers
replace the sky with a starry night, the stars are shining over the old city
a small house in the forest, the trees are tall and the path is covered in leaves
a dog playing with a ball in the park on a sunny summer day, people walking around
the building has large glass windows and a modern design, architecture photography
a close up of a flower with water drops on the petals, macro photography, bokeh
a car parked in front of the station at night under the rain, neon lights reflecting
blurry, low quality, bad anatomy, watermark, text, signature, jpeg artifacts, ugly
the painting shows a woman holding a basket of bread and a glass of wine
there is a boat on the river and the water is calm, the reflection of the hills
""" * 3


def make_tokenizer(num_merges: int, max_length: int, workdir: Path):
    merges = clip_bpe.learn_bpe(CORPUS, num_merges)
    workdir.mkdir(parents=True, exist_ok=True)
    vocab = clip_bpe.write_vocab_files(workdir, merges)
    (workdir / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length})
    )
    tok = CLIPTokenizer.from_pretrained(str(workdir))
    assert len(tok) == len(vocab), (len(tok), len(vocab))
    assert tok.model_max_length == max_length
    return tok, vocab, merges


def special_tokens_map() -> dict:
    # The layout of SD-1.5's tokenizer/special_tokens_map.json (written by transformers 4.x).
    def added(content):
        return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    return {
        "bos_token": added(clip_bpe.BOS),
        "eos_token": added(clip_bpe.EOS),
        "pad_token": clip_bpe.EOS,
        "unk_token": added(clip_bpe.EOS),
    }


# SD-1.5's scheduler/scheduler_config.json, verbatim (no timestep_spacing / prediction_type keys, so
# `X.from_config(pipe.scheduler.config)` gives every other scheduler its *own* defaults for them).
SD15_SCHEDULER_CONFIG = {
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

# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def sd_blocks(n: int):
    down = ("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1)
    return down, up


MODELS = {
    # 2 UNet blocks, int attention_head_dim, norm groups 32 (SD value), VAE factor 2.
    "tiny-sd-a": dict(
        seed=1000,
        tokenizer=dict(num_merges=300, max_length=77),
        text=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        unet=dict(in_channels=9, block_out_channels=(32, 32), layers_per_block=1, attention_head_dim=2,
                  cross_attention_dim=32, norm_num_groups=32, sample_size=16),
        vae=dict(block_out_channels=(32, 32), layers_per_block=1, norm_num_groups=32),
    ),
    # 3 UNet blocks, per-block attention_head_dim list, layers_per_block 2, cross_attention_dim 48,
    # tokenizer/text-encoder max length 16, VAE factor 4.
    "tiny-sd-b": dict(
        seed=2000,
        text_encoder_keys="transformers5",  # text_encoder/model.safetensors keys without `text_model.`
        tokenizer=dict(num_merges=200, max_length=16),
        text=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4),
        unet=dict(in_channels=9, block_out_channels=(16, 16, 32), layers_per_block=2, attention_head_dim=[1, 2, 4],
                  cross_attention_dim=48, norm_num_groups=8, sample_size=8),
        vae=dict(block_out_channels=(16, 16, 32), layers_per_block=1, norm_num_groups=8),
    ),
    # SD-1.5 topology in miniature: 4 UNet blocks, 8 "heads" everywhere, 4 VAE blocks with
    # layers_per_block 2 (VAE factor 8), 4 text layers.
    "tiny-sd-c": dict(
        seed=3000,
        tokenizer=dict(num_merges=400, max_length=77),
        text=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4),
        unet=dict(in_channels=9, block_out_channels=(8, 16, 16, 16), layers_per_block=2, attention_head_dim=8,
                  cross_attention_dim=32, norm_num_groups=4, sample_size=8),
        vae=dict(block_out_channels=(8, 8, 16, 16), layers_per_block=2, norm_num_groups=4),
    ),
    # Standard 4-channel text-to-image UNet used for inpainting by latent blending. VAE factor 4.
    "tiny-sd-4ch": dict(
        seed=4000,
        tokenizer=dict(num_merges=250, max_length=77),
        text=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4),
        unet=dict(in_channels=4, block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=4,
                  cross_attention_dim=32, norm_num_groups=8, sample_size=16),
        vae=dict(block_out_channels=(16, 16, 32), layers_per_block=1, norm_num_groups=8),
    ),
}


def build_model(name: str, spec: dict, out: Path, workdir: Path):
    tok, vocab, merges = make_tokenizer(workdir=workdir / name, **spec["tokenizer"])
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id

    torch.manual_seed(spec["seed"])
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tok),
            max_position_embeddings=spec["tokenizer"]["max_length"],
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=pad,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            projection_dim=spec["text"]["hidden_size"],
            **spec["text"],
        )
    ).eval()

    torch.manual_seed(spec["seed"] + 1)
    nb = len(spec["unet"]["block_out_channels"])
    down, up = sd_blocks(nb)
    unet = UNet2DConditionModel(
        out_channels=4, down_block_types=down, up_block_types=up, **spec["unet"]
    ).eval()

    torch.manual_seed(spec["seed"] + 2)
    nv = len(spec["vae"]["block_out_channels"])
    vae_factor = 2 ** (nv - 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * nv,
        up_block_types=("UpDecoderBlock2D",) * nv,
        sample_size=spec["unet"]["sample_size"] * vae_factor,
        **spec["vae"],
    ).eval()

    scheduler = PNDMScheduler.from_config(SD15_SCHEDULER_CONFIG)
    pipe = StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(str(out), safe_serialization=True)

    # Tokenizer folder in the SD-1.5 layout: transformers 5 writes tokenizer.json + tokenizer_config.json;
    # add the classic vocab.json / merges.txt / special_tokens_map.json too.
    clip_bpe.write_vocab_files(out / "tokenizer", merges)
    (out / "tokenizer" / "special_tokens_map.json").write_text(json.dumps(special_tokens_map(), indent=2) + "\n")
    # Scheduler config exactly as SD-1.5 ships it.
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER_CONFIG, indent=2) + "\n")
    if spec.get("text_encoder_keys", "hub") == "hub":
        # SD-1.5 on the hub stores CLIPTextModel weights as `text_model.*`; transformers >= 5.6 saves them
        # without that prefix (it loads both).  Most models use the hub layout, tiny-sd-b keeps the new one.
        te_file = out / "text_encoder" / "model.safetensors"
        sd = load_file(str(te_file))
        save_file({("text_model." + k if not k.startswith("text_model.") else k): v for k, v in sorted(sd.items())},
                  str(te_file), metadata={"format": "pt"})
    normalise_json_files(out)
    return vocab, merges


def normalise_json_files(folder: Path):
    """Drop machine-specific keys (temp paths) that would make reruns differ."""
    for p in folder.rglob("*.json"):
        data = json.loads(p.read_text())
        if not isinstance(data, dict):
            continue
        changed = False
        for key in ("_name_or_path", "name_or_path", "is_local", "local_files_only"):
            if key in data:
                del data[key]
                changed = True
        if changed:
            p.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_pipe(folder: Path) -> StableDiffusionInpaintPipeline:
    pipe = StableDiffusionInpaintPipeline.from_pretrained(
        str(folder), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        local_files_only=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cpu", torch.float32)


# --------------------------------------------------------------------------------------------
# Tokenizer reference
# --------------------------------------------------------------------------------------------
TOKENIZER_PROMPTS = [
    "a photo of a cat",
    "A Painting Of A RED Fox, highly-detailed!!!",
    "remove the person; fill with grass (and flowers) ... ok?",
    "3 apples, 12 oranges and 2024 bananas: 3.14159",
    "café naïve résumé Ångström",
    "e\u0301 decomposed accent (NFD)",
    "emoji 🐱🔥 and ✨ sparkles",
    "日本語のテキスト and Ελληνικά",
    "   lots   of \t whitespace \n\n here   ",
    "tom &amp; jerry &lt;b&gt; &quot;quoted&quot; &#39;x&#39;",
    "don't it's we'll they're I'M you've he'd",
    "<|startoftext|> literal special tokens <|endoftext|>",
    "",
    " ",
    "a very long prompt about " + ", ".join(["a house", "a tree", "a river", "a bridge", "a mountain", "a cloud",
                                              "the sun", "a boat", "a bird", "a horse"] * 6),
]


def tokenizer_cases(models_dir: Path, vocab_merges: dict) -> dict:
    out = {
        "description": "input_ids = CLIPTokenizer(prompt, padding='max_length', max_length=tokenizer.model_max_length, "
        "truncation=True).input_ids, tokenizer loaded with CLIPTokenizer.from_pretrained(models/<model>/tokenizer). "
        "truncated = the un-truncated encoding (with BOS/EOS) is longer than max_length. tokens = the id strings.",
        "versions": VERSIONS,
        "models": {},
    }
    for name in MODELS:
        tok = CLIPTokenizer.from_pretrained(str(models_dir / name / "tokenizer"))
        vocab, merges = vocab_merges[name]
        ref = clip_bpe.ReferenceClipTokenizer(vocab, merges, tok.model_max_length)
        # Cross-check: a tokenizer built only from vocab.json + merges.txt gives the same ids.
        with tempfile.TemporaryDirectory() as td:
            for f in ("vocab.json", "merges.txt", "special_tokens_map.json"):
                shutil.copy(models_dir / name / "tokenizer" / f, td)
            (Path(td) / "tokenizer_config.json").write_text(
                json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": tok.model_max_length})
            )
            tok_from_vocab = CLIPTokenizer.from_pretrained(td)
        cases = []
        for prompt in TOKENIZER_PROMPTS:
            enc = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True)
            ids = list(enc.input_ids)
            full = tok(prompt).input_ids
            ref_ids, ref_trunc = ref.encode(prompt)
            ids2 = list(tok_from_vocab(prompt, padding="max_length", max_length=tok.model_max_length,
                                       truncation=True).input_ids)
            assert ids == ids2, (name, prompt, "tokenizer.json vs vocab.json+merges.txt")
            assert ids == ref_ids, (name, prompt, ids, ref_ids)
            truncated = len(full) > tok.model_max_length
            assert truncated == ref_trunc
            cases.append({
                "prompt": prompt,
                "input_ids": ids,
                "truncated": truncated,
                "untruncated_length": len(full),
                "tokens": tok.convert_ids_to_tokens(ids),
            })
        out["models"][name] = {
            "model_max_length": tok.model_max_length,
            "vocab_size": len(tok),
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "cases": cases,
        }
    return out


# --------------------------------------------------------------------------------------------
# Synthetic inputs
# --------------------------------------------------------------------------------------------


def make_image(width: int, height: int, variant: int = 0) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    r = (x * 255) // max(width - 1, 1)
    g = (y * 255) // max(height - 1, 1)
    b = ((x + y) * 7 + variant * 40) % 256
    img = np.stack([r, g, b], axis=-1)
    # a filled circle and a rectangle with flat colours
    cx, cy, rad = width // 3, height // 2, min(width, height) // 4
    circle = (x - cx) ** 2 + (y - cy) ** 2 <= rad * rad
    img[circle] = [200, 40 + 30 * variant, 60]
    rect = (x >= width * 5 // 8) & (x < width * 7 // 8) & (y >= height // 8) & (y < height * 3 // 8)
    img[rect] = [20, 180, 220]
    return Image.fromarray(img.astype(np.uint8), "RGB")


def make_mask(width: int, height: int, mode: str = "L", kind: str = "default") -> Image.Image:
    """Black (keep) background; white rectangle (repaint); greys near 0.5 so binarisation matters.

    kind="compact": a white rectangle with a 3-pixel grey feather (64/128/192) and nothing else, so that
    `padding_mask_crop` finds a real crop region and `apply_overlay` blends the greys.
    """
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    m = np.zeros((height, width), np.int64)
    if kind == "compact":
        x0, x1, y0, y1 = width * 5 // 12, width * 7 // 12, height * 3 // 8, height * 5 // 8
        for ring, val in ((3, 64), (2, 128), (1, 192), (0, 255)):
            m[(x >= x0 - ring) & (x < x1 + ring) & (y >= y0 - ring) & (y < y1 + ring)] = val
        return Image.fromarray(m.astype(np.uint8), "L")
    m[(x >= width // 4) & (x < width * 5 // 8) & (y >= height // 4) & (y < height * 3 // 4)] = 255
    # ellipse at 128 (128/255 = 0.502 -> 1 = repaint)
    ell = ((x - width * 3 // 4) * 2) ** 2 + ((y - height * 3 // 4) * 3) ** 2 <= (min(width, height) // 2) ** 2
    m[ell] = 128
    # band at 127 (0.498 -> 0 = keep) next to it
    m[(y >= height - 3) & (x < width // 2)] = 127
    # a few scattered near-threshold pixels
    m[1, 1], m[1, 2], m[2, 1], m[2, 2] = 126, 129, 1, 254
    # faint grey (0.2, keep) stripe
    m[(x == width - 2)] = 51
    arr = m.astype(np.uint8)
    if mode == "L":
        return Image.fromarray(arr, "L")
    return Image.fromarray(np.stack([arr] * 3, axis=-1), "RGB")


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
SCHEDULERS = {
    "PNDMScheduler": PNDMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
}

DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}

CASES = [
    dict(name="a_pndm_cfg_strength1", model="tiny-sd-a", scheduler="PNDMScheduler",
         prompt="a photo of a cat sitting on a wooden table", width=64, height=48, steps=4, guidance=7.5,
         strength=1.0, seeds=[0],
         covers=["PNDM (pipeline default)", "CFG with empty negative prompt", "strength 1.0", "non-square 64x48",
                 "VAE factor 2"]),
    dict(name="a_pndm_nocfg_strength06", model="tiny-sd-a", scheduler="PNDMScheduler",
         prompt="a red fox in the snow", width=32, height=32, steps=5, guidance=1.0, strength=0.6, seeds=[42],
         covers=["guidance 1.0 (no CFG, single UNet batch)", "strength 0.6 (int(5*0.6)=3 steps, add_noise start)",
                 "square 32x32"]),
    dict(name="a_ddim_eta0_negative", model="tiny-sd-a", scheduler="DDIMScheduler",
         prompt="a beautiful landscape with mountains", negative_prompt="blurry, low quality, watermark",
         width=48, height=32, steps=4, guidance=7.5, strength=1.0, seeds=[7], eta=0.0,
         covers=["DDIM eta 0", "negative prompt", "48x32"]),
    dict(name="a_dpmpp2m_karras_strength06", model="tiny-sd-a", scheduler="DPMSolverMultistepScheduler",
         scheduler_kwargs={**DPMPP, "use_karras_sigmas": True}, prompt="a bowl of fresh fruit",
         width=64, height=48, steps=5, guidance=7.5, strength=0.6, seeds=[123],
         covers=["DPM++ 2M Karras", "strength 0.6 with a sigma-based scheduler"]),
    dict(name="a_rgb_mask_euler", model="tiny-sd-a", scheduler="EulerDiscreteScheduler",
         prompt="a small house in the forest", width=40, height=24, steps=3, guidance=7.5, strength=1.0,
         seeds=[5], mask_mode="RGB",
         covers=["EulerDiscrete", "RGB mask (R=G=B) converted to L by the mask processor", "40x24"]),
    dict(name="b_ddim_eta05_two_generators", model="tiny-sd-b", scheduler="DDIMScheduler",
         prompt="an astronaut riding a horse on the moon", width=64, height=48, steps=4, guidance=7.5,
         strength=0.6, seeds=[1, 2], num_images=2, eta=0.5,
         covers=["DDIM eta 0.5 (per-step noise from each image's generator)", "2 images, list of generators",
                 "strength 0.6", "per-block attention_head_dim list", "cross_attention_dim 48",
                 "VAE factor 4"]),
    dict(name="b_ddim_eta05_seed2_alone", model="tiny-sd-b", scheduler="DDIMScheduler",
         prompt="an astronaut riding a horse on the moon", width=64, height=48, steps=4, guidance=7.5,
         strength=0.6, seeds=[2], num_images=1, eta=0.5,
         covers=["same as b_ddim_eta05_two_generators but seed 2 alone: its output differs from image 1 of that "
                 "case, because diffusers samples the VAE latents of the (single) input image with generator[0] "
                 "only and shares them across the batch"]),
    dict(name="b_euler_cfg", model="tiny-sd-b", scheduler="EulerDiscreteScheduler",
         prompt="a dog playing with a ball in the park", width=32, height=64, steps=4, guidance=7.5,
         strength=1.0, seeds=[11],
         covers=["EulerDiscrete (init_noise_sigma > 1, scale_model_input)", "portrait 32x64"]),
    dict(name="b_pndm_single_generator_two_images", model="tiny-sd-b", scheduler="PNDMScheduler",
         prompt="replace the sky with a starry night over the old city, highly detailed, trending, cinematic",
         negative_prompt="ugly", width=48, height=48, steps=3, guidance=5.0, strength=1.0, seeds=[99],
         num_images=2, generator_mode="single",
         covers=["num_images_per_prompt 2 with ONE generator (noise drawn as one (2,4,h,w) tensor)",
                 "prompt longer than 16 tokens (truncated)", "guidance 5.0"]),
    dict(name="c_euler_ancestral_negative", model="tiny-sd-c", scheduler="EulerAncestralDiscreteScheduler",
         prompt="a portrait of an old man with a white beard", negative_prompt="bad anatomy, text",
         width=64, height=64, steps=4, guidance=7.5, strength=1.0, seeds=[2024],
         covers=["EulerAncestral (per-step noise)", "VAE factor 8 (SD-like 4-block VAE)", "4 UNet blocks",
                 "8 heads everywhere"]),
    dict(name="c_dpmpp2m_128x64", model="tiny-sd-c", scheduler="DPMSolverMultistepScheduler",
         scheduler_kwargs=dict(DPMPP), prompt="a car parked in front of the station at night",
         width=128, height=64, steps=5, guidance=7.5, strength=1.0, seeds=[31337],
         covers=["DPM++ 2M (no karras)", "128x64"]),
    dict(name="c_odd_latent_upsample_size", model="tiny-sd-c", scheduler="PNDMScheduler",
         prompt="a boat on the river", width=64, height=48, steps=3, guidance=7.5, strength=0.6, seeds=[8],
         covers=["latent 8x6 not divisible by 2**3: UNet forwards upsample_size (nearest to 3 from 2 etc.)",
                 "strength 0.6 with PNDM"]),
    dict(name="a_padding_mask_crop", model="tiny-sd-a", scheduler="PNDMScheduler",
         prompt="a bird on a branch", width=32, height=32, steps=3, guidance=7.5, strength=1.0, seeds=[4],
         image_size=(96, 64), mask_kind="compact", padding_mask_crop=4,
         covers=["padding_mask_crop=4 (optional feature): crop region from the mask, crop + PIL lanczos 'fill' "
                 "resize to 32x32, result resized back and pasted with apply_overlay (original pixels kept where "
                 "mask is 0, grey feather blended by PIL alpha)", "input image 96x64 != processing size"]),
    dict(name="d_4ch_pndm_cfg", model="tiny-sd-4ch", scheduler="PNDMScheduler",
         prompt="a close up of a flower with water drops", width=64, height=48, steps=4, guidance=7.5,
         strength=1.0, seeds=[3],
         covers=["4-channel UNet: latent blending with re-noised image latents", "strength 1.0 still samples the "
                 "image latents (consumes random numbers)"]),
    dict(name="d_4ch_ddim_strength06_two_generators", model="tiny-sd-4ch", scheduler="DDIMScheduler",
         prompt="a painting of a woman holding a basket", width=48, height=32, steps=5, guidance=1.0,
         strength=0.6, seeds=[10, 20], num_images=2, eta=0.0,
         covers=["4-channel UNet", "strength 0.6", "guidance 1.0", "2 images, list of generators"]),
    dict(name="d_4ch_euler_ancestral", model="tiny-sd-4ch", scheduler="EulerAncestralDiscreteScheduler",
         prompt="a bird on a branch", negative_prompt="blurry", width=32, height=32, steps=3, guidance=7.5,
         strength=1.0, seeds=[77],
         covers=["4-channel UNet with a sigma-based ancestral scheduler"]),
]


def expected_draws(case: dict, latent_hw, unet_in: int, sched) -> list[dict]:
    """The random draws the pipeline makes, in order (documented in case.json, verified below)."""
    h, w = latent_hw
    n = case.get("num_images", 1)
    gens = list(range(len(case["seeds"]))) if case.get("generator_mode", "list") == "list" else [0]
    per_image = len(gens) > 1
    draws = []

    def noise_like(what):
        if per_image:
            for g in gens:
                draws.append({"generator": g, "what": what + f" (image {g})", "shape": [1, 4, h, w]})
        else:
            draws.append({"generator": 0, "what": what, "shape": [n, 4, h, w]})

    if unet_in == 4 or case["strength"] < 1.0:
        draws.append({"generator": 0, "what": "vae.encode(image).latent_dist.sample", "shape": [1, 4, h, w]})
    noise_like("initial noise")
    draws.append({"generator": 0, "what": "vae.encode(masked_image).latent_dist.sample", "shape": [1, 4, h, w]})
    steps_run = len(case["_timesteps"])
    stochastic = isinstance(sched, EulerAncestralDiscreteScheduler) or (
        isinstance(sched, DDIMScheduler) and case.get("eta", 0.0) > 0
    )
    if stochastic:
        for i in range(steps_run):
            noise_like(f"scheduler.step noise, step {i}")
    return draws


def make_generators(case):
    if case.get("generator_mode", "list") == "single":
        assert len(case["seeds"]) == 1
        return torch.Generator("cpu").manual_seed(case["seeds"][0])
    return [torch.Generator("cpu").manual_seed(s) for s in case["seeds"]]


def scheduler_public_config(sched) -> dict:
    return {k: v for k, v in dict(sched.config).items() if not k.startswith("_")}


def jsonable(v):
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: jsonable(x) for k, x in v.items()}
    return v


def run_case(pipe: StableDiffusionInpaintPipeline, case: dict, out_dir: Path, output_type="np", record=True):
    """Runs one case. Returns (images, intermediates, timesteps, generators)."""
    base_sched = pipe.scheduler
    cls = SCHEDULERS[case["scheduler"]]
    pipe.scheduler = cls.from_config(base_sched.config, **case.get("scheduler_kwargs", {}))
    sched = pipe.scheduler
    inter: dict[str, torch.Tensor] = {}
    timesteps = []

    orig_encode_prompt = pipe.encode_prompt
    orig_prepare_latents = pipe.prepare_latents
    orig_prepare_mask_latents = pipe.prepare_mask_latents

    def encode_prompt(*a, **k):
        pe, npe = orig_encode_prompt(*a, **k)
        inter["prompt_embeds"] = pe.detach().clone()
        if npe is not None:
            inter["negative_prompt_embeds"] = npe.detach().clone()
        return pe, npe

    def prepare_latents(*a, **k):
        outs = orig_prepare_latents(*a, **k)
        inter["initial_latents"] = outs[0].detach().clone()
        inter["noise"] = outs[1].detach().clone()
        if len(outs) > 2:
            inter["image_latents"] = outs[2].detach().clone()
        return outs

    def prepare_mask_latents(*a, **k):
        mask, mil = orig_prepare_mask_latents(*a, **k)
        inter["mask_latent"] = mask.detach().clone()
        inter["masked_image_latents"] = mil.detach().clone()
        return mask, mil

    def on_step_end(p, i, t, kw):
        timesteps.append(t.item() if torch.is_tensor(t) else t)
        inter[f"latents_step_{i:02d}"] = kw["latents"].detach().clone()
        return {}

    if record:
        pipe.encode_prompt = encode_prompt
        pipe.prepare_latents = prepare_latents
        pipe.prepare_mask_latents = prepare_mask_latents
    gens = make_generators(case)
    try:
        image = Image.open(out_dir / "image.png")
        mask = Image.open(out_dir / "mask.png")
        result = pipe(
            prompt=case["prompt"],
            negative_prompt=case.get("negative_prompt"),
            image=image,
            mask_image=mask,
            height=case["height"],
            width=case["width"],
            num_inference_steps=case["steps"],
            guidance_scale=case["guidance"],
            strength=case["strength"],
            eta=case.get("eta", 0.0),
            num_images_per_prompt=case.get("num_images", 1),
            padding_mask_crop=case.get("padding_mask_crop"),
            generator=gens,
            output_type=output_type,
            callback_on_step_end=on_step_end if record else None,
            callback_on_step_end_tensor_inputs=["latents"],
        )
    finally:
        for attr in ("encode_prompt", "prepare_latents", "prepare_mask_latents"):
            if attr in pipe.__dict__:
                del pipe.__dict__[attr]
        pipe.scheduler = base_sched
    return result.images, inter, timesteps, gens, sched


def verify_draws(case, draws, gens, recorded_noise):
    """Replays the documented draws with fresh generators: the initial noise must match exactly and every
    generator must end in the same state as the pipeline's (=> same count and sizes of draws)."""
    replay = [torch.Generator("cpu").manual_seed(s) for s in case["seeds"]]
    noise_parts = []
    for d in draws:
        t = torch.randn(d["shape"], generator=replay[d["generator"]], dtype=torch.float32)
        if d["what"].startswith("initial noise"):
            noise_parts.append(t)
    noise = torch.cat(noise_parts, 0)
    assert torch.equal(noise, recorded_noise), f"{case['name']}: noise draw order differs"
    gl = gens if isinstance(gens, list) else [gens]
    for g, r in zip(gl, replay):
        assert torch.equal(g.get_state(), r.get_state()), f"{case['name']}: generator consumption differs"


def to_pil(images_np: np.ndarray):
    return StableDiffusionInpaintPipeline.numpy_to_pil(images_np)


def main():
    t_start = time.time()
    if FIXTURES.exists():
        shutil.rmtree(FIXTURES)
    models_dir = FIXTURES / "models"
    cases_dir = FIXTURES / "cases"
    models_dir.mkdir(parents=True)
    cases_dir.mkdir(parents=True)

    vocab_merges = {}
    model_info = {}
    with tempfile.TemporaryDirectory() as td:
        for name, spec in MODELS.items():
            vocab_merges[name] = build_model(name, spec, models_dir / name, Path(td))
            n_params = {}
            print(f"built {name}", flush=True)
            model_info[name] = spec

    (FIXTURES / "tokenizer_cases.json").write_text(
        json.dumps(tokenizer_cases(models_dir, vocab_merges), indent=1, ensure_ascii=False) + "\n"
    )
    print("tokenizer cases written", flush=True)

    pipes = {name: load_pipe(models_dir / name) for name in MODELS}

    # Single-file LDM checkpoint for one model, verified by loading it back.
    ckpt_report = ldm_ckpt.write_and_verify(pipes["tiny-sd-c"], models_dir / "tiny-sd-c", models_dir, FIXTURES)

    for case in CASES:
        pipe = pipes[case["model"]]
        out_dir = cases_dir / case["name"]
        out_dir.mkdir(parents=True)
        variant = sum(map(ord, case["name"])) % 5
        iw, ih = case.get("image_size", (case["width"], case["height"]))
        make_image(iw, ih, variant).save(out_dir / "image.png")
        make_mask(iw, ih, case.get("mask_mode", "L"), case.get("mask_kind", "default")).save(out_dir / "mask.png")

        crop = case.get("padding_mask_crop")
        # apply_overlay (padding_mask_crop) only works on PIL outputs
        images, inter, timesteps, gens, sched = run_case(pipe, case, out_dir, output_type="pil" if crop else "np")
        case["_timesteps"] = timesteps
        vsf = pipe.vae_scale_factor
        latent_hw = (case["height"] // vsf, case["width"] // vsf)
        draws = expected_draws(case, latent_hw, pipe.unet.config.in_channels, sched)
        verify_draws(case, draws, gens, inter["noise"])

        if crop:
            pil_images = images
            images = np.stack([np.asarray(im) for im in pil_images]).astype(np.float32) / 255.0
        else:
            images = np.asarray(images, dtype=np.float32)
            np.save(out_dir / "outputs.npy", images)
            inter["output_image"] = torch.from_numpy(images.copy())
            pil_images = to_pil(images)
        outputs = []
        for i, im in enumerate(pil_images):
            fn = f"output_{i}.png"
            im.save(out_dir / fn)
            outputs.append(fn)
        save_file({k: v.contiguous() for k, v in sorted(inter.items())}, str(out_dir / "intermediates.safetensors"),
                  metadata={"case": case["name"]})

        sched_kwargs = case.get("scheduler_kwargs", {})
        doc = {
            "name": case["name"],
            "covers": case["covers"],
            "model": case["model"],
            "pipeline": "StableDiffusionInpaintPipeline",
            "prompt": case["prompt"],
            "negative_prompt": case.get("negative_prompt"),
            "scheduler": case["scheduler"],
            "scheduler_created_with": f"{case['scheduler']}.from_config(pipe.scheduler.config"
            + "".join(f", {k}={v!r}" for k, v in sched_kwargs.items()) + ")",
            "scheduler_kwargs": sched_kwargs,
            "scheduler_config": jsonable(scheduler_public_config(sched)),
            "num_inference_steps": case["steps"],
            "guidance_scale": case["guidance"],
            "do_classifier_free_guidance": case["guidance"] > 1.0,
            "strength": case["strength"],
            "eta": case.get("eta", 0.0),
            "width": case["width"],
            "height": case["height"],
            "seeds": case["seeds"],
            "generator_mode": case.get("generator_mode", "list"),
            "num_images_per_prompt": case.get("num_images", 1),
            "padding_mask_crop": crop,
            "image_size": [iw, ih],
            "crop_region": list(pipe.mask_processor.get_crop_region(
                Image.open(out_dir / "mask.png"), case["width"], case["height"], pad=crop)) if crop else None,
            "output_type": "pil",
            "image": "image.png",
            "mask": "mask.png",
            "mask_png_mode": case.get("mask_mode", "L"),
            "outputs": outputs,
            "outputs_npy": None if crop else "outputs.npy",
            "intermediates": "intermediates.safetensors",
            "intermediate_keys": sorted(inter.keys()),
            "vae_scale_factor": vsf,
            "latent_shape": [case.get("num_images", 1), 4, *latent_hw],
            "timesteps": timesteps,
            "random_draws": draws,
            "versions": VERSIONS,
        }
        (out_dir / "case.json").write_text(json.dumps(doc, indent=1) + "\n")
        print(f"case {case['name']}: timesteps={timesteps} range=[{images.min():.3f},{images.max():.3f}] "
              f"mean={images.mean():.3f}", flush=True)

    # manifest with hashes (handy to compare reruns)
    manifest = {"versions": VERSIONS, "single_file_checkpoint": ckpt_report, "files": {}}
    for p in sorted(FIXTURES.rglob("*")):
        if p.is_file():
            manifest["files"][str(p.relative_to(FIXTURES))] = hashlib.sha256(p.read_bytes()).hexdigest()
    (FIXTURES / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in FIXTURES.rglob("*") if p.is_file())
    print(f"done in {time.time() - t_start:.1f}s, fixtures {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
