"""Writes a full-size SD-1.5-inpainting diffusers folder with RANDOM weights (configs of
runwayml/stable-diffusion-inpainting written out by hand; no download), for load-memory
measurements. About 4.3 GB: never commit it.

  .venv/bin/python tests/parity/fullsize_model.py /work/targets/fullsize-model
"""

import json
import pathlib
import sys

import torch

UNET = {"in_channels": 9, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "layers_per_block": 2, "attention_head_dim": 8, "cross_attention_dim": 768, "norm_num_groups": 32,
        "norm_eps": 1e-5, "flip_sin_to_cos": True, "freq_shift": 0, "sample_size": 64, "downsample_padding": 1,
        "act_fn": "silu", "center_input_sample": False, "mid_block_scale_factor": 1}
VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
       "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
       "layers_per_block": 2, "norm_num_groups": 32, "act_fn": "silu", "sample_size": 512, "scaling_factor": 0.18215}
TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
        "projection_dim": 768}


def main() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    out = pathlib.Path(sys.argv[1])
    torch.manual_seed(0)
    with torch.no_grad():
        UNet2DConditionModel(**UNET).save_pretrained(out / "unet")
        AutoencoderKL(**VAE).save_pretrained(out / "vae")
        CLIPTextModel(CLIPTextConfig(**TEXT)).save_pretrained(out / "text_encoder")
    for p in sorted(out.rglob("*.safetensors")):
        print(p, p.stat().st_size)


if __name__ == "__main__":
    main()
