"""Times diffusers' StableDiffusionInpaintPipeline on SD-1.5-inpainting's full-size architecture
with random weights (or the tiny test model), for ops/gpu/check.sh's ratio against the engine.
Nothing is downloaded: the configs are SD-1.5-inpainting's, written out here, and the tokenizer is
the tiny test model's (its ids fit SD's vocabulary).

  python3 ops/gpu/diffusers_time.py --device cuda --precision f16 --size 512 --steps 50 --batches 1,8

Prints one JSON line: {"batches": {"1": images_per_s, ...}, "diffusers": version, ...}. Each
batch is one pipeline call with `num_images_per_prompt = batch` after one untimed warm-up call.
"""

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/parity/fixtures/models/tiny-sd-a"
sys.path.insert(0, str(ROOT / "tests/parity"))


def build(model: str, dtype, device):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if model == "embedded-tiny":
        pipe = StableDiffusionInpaintPipeline.from_pretrained(TINY, safety_checker=None,
                                                              requires_safety_checker=False)
        return pipe.to(device=device, dtype=dtype)
    from fullsize_model import TEXT, UNET, VAE  # SD-1.5-inpainting's configs, by hand

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET)
    vae = AutoencoderKL(**VAE)
    text = CLIPTextModel(CLIPTextConfig(**TEXT))
    tokenizer = CLIPTokenizer.from_pretrained(TINY / "tokenizer")
    scheduler = PNDMScheduler.from_pretrained(TINY / "scheduler")
    pipe = StableDiffusionInpaintPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
    pipe = pipe.to(device=device, dtype=dtype)
    pipe.vae.to(torch.float32)  # as the engine runs it
    return pipe


def main() -> None:
    import torch
    from PIL import Image

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="full-size-random")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="f16", choices=["f32", "f16", "bf16"])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batches", default="1")
    args = parser.parse_args()
    dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    pipe = build(args.model, dtype, args.device)
    pipe.set_progress_bar_config(disable=True)
    side = args.size
    image = Image.new("RGB", (side, side), (120, 140, 160))
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
    out = {}
    for batch in [int(b) for b in args.batches.split(",")]:
        def call():
            generator = torch.Generator(device="cpu").manual_seed(1)
            pipe(prompt="a photograph of a garden", negative_prompt="blurry", image=image, mask_image=mask,
                 height=side, width=side, num_inference_steps=args.steps, guidance_scale=7.5,
                 num_images_per_prompt=batch, generator=generator, output_type="np")
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
        call()
        started = time.perf_counter()
        call()
        out[str(batch)] = batch / (time.perf_counter() - started)
    import diffusers
    print(json.dumps({"batches": out, "diffusers": diffusers.__version__, "torch": torch.__version__,
                      "device": args.device, "precision": args.precision, "size": side, "steps": args.steps}))


if __name__ == "__main__":
    main()
