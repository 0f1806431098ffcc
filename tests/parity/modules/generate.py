"""Per-module reference outputs for the Rust engine's model tests.

For every tiny model under tests/parity/fixtures/models, runs diffusers/transformers on CPU in fp32
and saves inputs and outputs of each network (text encoder, VAE encode/decode, UNet) to
tests/parity/modules/fixtures/<model>.safetensors, so a mismatch is found in the module that
causes it rather than only in the final image.

    .venv/bin/python tests/parity/modules/generate.py
"""

import pathlib

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ROOT / "fixtures" / "models"
OUT = pathlib.Path(__file__).resolve().parent / "fixtures"


def main() -> None:
    torch.manual_seed(0)
    OUT.mkdir(exist_ok=True)
    for folder in sorted(p for p in MODELS.iterdir() if p.is_dir()):
        text = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
        vae = AutoencoderKL.from_pretrained(folder / "vae").eval()
        unet = UNet2DConditionModel.from_pretrained(folder / "unet").eval()
        g = torch.Generator().manual_seed(1234)
        t = {}
        with torch.no_grad():
            length = text.config.max_position_embeddings
            ids = torch.randint(0, text.config.vocab_size, (2, length), generator=g)
            t["text.ids"] = ids
            t["text.out"] = text(ids)[0].contiguous()

            factor = 2 ** (len(vae.config.block_out_channels) - 1)
            # A non-square size whose latent is odd-sized on the way down exercises padding.
            height, width = 8 * factor * 2 + 8 * factor, 8 * factor * 2
            pixels = torch.rand((1, 3, height, width), generator=g) * 2 - 1
            dist = vae.encode(pixels).latent_dist
            t["vae.pixels"] = pixels
            t["vae.mean"] = dist.mean.contiguous()
            t["vae.std"] = dist.std.contiguous()
            latents = torch.randn(dist.mean.shape, generator=g)
            t["vae.latents"] = latents
            t["vae.decoded"] = vae.decode(latents).sample.contiguous()

            cin = unet.config.in_channels
            lh, lw = 5, 6  # odd sizes: the up path must follow the skip sizes
            sample = torch.randn((2, cin, lh, lw), generator=g)
            context = torch.randn((2, 7, unet.config.cross_attention_dim), generator=g)
            for name, step in (("int", torch.tensor(801)), ("float", torch.tensor(433.25))):
                t[f"unet.{name}.timestep"] = step.reshape(1).to(torch.float64)
                t[f"unet.{name}.out"] = unet(sample, step, context).sample.contiguous()
            t["unet.sample"] = sample
            t["unet.context"] = context
        save_file(t, OUT / f"{folder.name}.safetensors")
        print(folder.name, {k: tuple(v.shape) for k, v in t.items()})


if __name__ == "__main__":
    main()
