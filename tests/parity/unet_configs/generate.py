"""Random small configs of the SD-1.x model family, run by diffusers/transformers, for the Rust
test worker/engine/tests/config_family.rs.

Each case is one component (UNet2DConditionModel, AutoencoderKL or CLIPTextModel) with a random
config drawn across the family's parameters: block count and types (CrossAttnDownBlock2D /
DownBlock2D, CrossAttnUpBlock2D / UpBlock2D, chosen independently), channels, heads as an int or
a per-block list (often NOT dividing the channels, and set on blocks without attention), norm
groups, layers per block, transformer_layers_per_block (int or list), cross-attention dim,
use_linear_projection, in_channels 9 or 4; VAE depth, channels, groups, layers, scaling_factor;
text encoder hidden_act gelu/quick_gelu and sizes. About a quarter of the UNet cases also set one
option that diffusers runs but the engine does not implement (expect: refuse, naming the key).

Weights are not stored: every tensor is filled from a counter-based splitmix64 stream that the
Rust test reproduces bit for bit (`weights()` below), so the fixture is only configs, tensor
names and shapes, inputs and diffusers' outputs (cases.json + expected.safetensors, < 1 MB).

  .venv/bin/python tests/parity/unet_configs/generate.py      # rewrites fixtures/ here
"""

from __future__ import annotations

import json
import pathlib
import random

import numpy as np
import torch
from safetensors.torch import save_file

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "fixtures"
MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def uniform(seed: int, count: int) -> np.ndarray:
    """splitmix64 outputs seed+1..seed+count steps, top 24 bits as exact floats in [-1, 1)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed & MASK) + (np.arange(1, count + 1, dtype=np.uint64) * np.uint64(GOLDEN))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24) * 2.0 - 1.0


def tensor(seed: int, name: str, shape: list[int]) -> torch.Tensor:
    count = int(np.prod(shape)) if shape else 1
    u = uniform(seed, count)
    if len(shape) >= 2:
        values = u * (1.0 / np.sqrt(float(np.prod(shape[1:]))))
    elif name.endswith("weight"):
        values = 1.0 + 0.1 * u
    else:
        values = 0.1 * u
    return torch.from_numpy(values.astype(np.float32).reshape(shape))


def weights(model: torch.nn.Module, case_seed: int) -> list[list]:
    """Fills every tensor of the state dict (sorted names; tensor k uses seed case_seed*4096+k)."""
    state = model.state_dict()
    names = sorted(state)
    filled = {}
    for k, name in enumerate(names):
        shape = list(state[name].shape)
        filled[name] = tensor(case_seed * 4096 + k, name, shape)
    model.load_state_dict(filled)
    return [[name, list(state[name].shape)] for name in names]


UNSUPPORTED = [
    ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
    ({"mid_block_type": "UNetMidBlock2D"}, "mid_block_type"),
    ({"mid_block_type": None}, "mid_block_type"),
    ({"conv_in_kernel": 1, "conv_out_kernel": 1}, "conv_in_kernel"),
    ({"only_cross_attention": True}, "only_cross_attention"),
    ({"act_fn": "mish"}, "act_fn"),
    ({"class_embed_type": "timestep"}, "class_embed_type"),
    ({"time_embedding_act_fn": "silu"}, "time_embedding_act_fn"),
]


def unet_config(rng: random.Random) -> tuple[dict, str | None]:
    n = rng.choice([1, 2, 2, 3, 3, 4])
    groups = rng.choice([2, 4, 8])
    channels = [groups * rng.choice([2, 3, 4]) for _ in range(n)]
    down = [rng.choice(["CrossAttnDownBlock2D", "DownBlock2D"]) for _ in range(n)]
    up = [rng.choice(["CrossAttnUpBlock2D", "UpBlock2D"]) for _ in range(n)]
    if rng.random() < 0.5:
        heads = rng.choice([1, 2, 3, 4, 5, 8])
        heads = min(heads, min(channels))
    else:
        heads = [rng.randint(1, min(c, 8)) for c in channels]
    config = {
        "in_channels": rng.choice([9, 9, 4]),
        "out_channels": 4,
        "block_out_channels": channels,
        "down_block_types": down,
        "up_block_types": up,
        "layers_per_block": rng.choice([1, 1, 2]),
        "attention_head_dim": heads,
        "cross_attention_dim": rng.choice([8, 12, 16]),
        "norm_num_groups": groups,
        "use_linear_projection": rng.random() < 0.5,
        "transformer_layers_per_block": rng.choice([1, 1, 2])
        if rng.random() < 0.7
        else [rng.randint(1, 2) for _ in range(n)],
        "upcast_attention": rng.random() < 0.3,
        "flip_sin_to_cos": rng.random() < 0.8,
        "freq_shift": rng.choice([0, 0, 1]),
        "sample_size": 8,
    }
    word = None
    if rng.random() < 0.25:
        extra, word = rng.choice(UNSUPPORTED)
        config.update(extra)
    return config, word


def vae_config(rng: random.Random) -> dict:
    n = rng.choice([1, 2, 3, 4])
    groups = rng.choice([2, 4, 8])
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [groups * rng.choice([2, 3, 4]) for _ in range(n)],
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "layers_per_block": rng.choice([1, 2]),
        "norm_num_groups": groups,
        "scaling_factor": rng.choice([0.18215, 0.13025, 1.0]),
        "sample_size": 16,
    }


def text_config(rng: random.Random) -> dict:
    heads = rng.choice([1, 2, 4])
    return {
        "vocab_size": rng.choice([50, 99]),
        "hidden_size": heads * rng.choice([4, 6, 8]),
        "intermediate_size": rng.choice([16, 24, 37]),
        "num_hidden_layers": rng.choice([1, 2, 3]),
        "num_attention_heads": heads,
        "max_position_embeddings": rng.choice([8, 16]),
        "hidden_act": rng.choice(["gelu", "quick_gelu"]),
        "layer_norm_eps": rng.choice([1e-5, 1e-6]),
    }


def inputs(seed: int, shape: list[int]) -> torch.Tensor:
    return torch.from_numpy(uniform(seed, int(np.prod(shape))).astype(np.float32).reshape(shape))


def main() -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    rng = random.Random(20261204)
    OUT.mkdir(exist_ok=True)
    cases, tensors = [], {}
    plan = ["unet"] * 48 + ["vae"] * 8 + ["text_encoder"] * 8
    for index, component in enumerate(plan):
        seed = index + 1
        name = f"{index:02d}_{component}"
        case = {"name": name, "component": component, "seed": seed}
        with torch.no_grad():
            if component == "unet":
                while True:
                    config, word = unet_config(rng)
                    try:
                        model = UNet2DConditionModel(**config).eval()
                        break
                    except Exception as e:  # noqa: BLE001  diffusers refuses it: draw another
                        print(f"{name}: diffusers refuses {config}: {e}")
                case["tensors"] = weights(model, seed)
                h, w = rng.choice([(8, 8), (12, 10), (6, 9)])
                sample = inputs(seed * 7 + 1, [1, config["in_channels"], h, w])
                context = inputs(seed * 7 + 2, [1, 5, config["cross_attention_dim"]])
                t = float(rng.choice([1, 500, 999, 37.5]))
                out = model(sample, torch.tensor([t]), encoder_hidden_states=context).sample
                tensors[f"{name}.sample"] = sample
                tensors[f"{name}.context"] = context
                case["timestep"] = t
                case["expect"] = "refuse" if word else "match"
                case["refuse_word"] = word
            elif component == "vae":
                config = vae_config(rng)
                model = AutoencoderKL(**config).eval()
                case["tensors"] = weights(model, seed)
                pixels = inputs(seed * 7 + 3, [1, 3, 16, 16])
                dist = model.encode(pixels).latent_dist
                tensors[f"{name}.pixels"] = pixels
                tensors[f"{name}.mean"] = dist.mean
                out = model.decode(dist.mean).sample
                case["expect"] = "match"
            else:
                config = text_config(rng)
                model = CLIPTextModel(CLIPTextConfig(**config)).eval()
                case["tensors"] = weights(model, seed)
                ids = torch.tensor([[rng.randrange(config["vocab_size"]) for _ in range(config["max_position_embeddings"])]])
                tensors[f"{name}.ids"] = ids
                out = model(ids).last_hidden_state
                case["expect"] = "match"
        case["config"] = config
        tensors[f"{name}.out"] = out.contiguous()
        cases.append(case)
        print(name, case["expect"], case.get("refuse_word"), json.dumps(config)[:150])
    import diffusers
    import transformers

    (OUT / "cases.json").write_text(
        json.dumps(
            {
                "description": __doc__.split("\n\n")[0],
                "versions": {
                    "torch": torch.__version__,
                    "diffusers": diffusers.__version__,
                    "transformers": transformers.__version__,
                },
                "cases": cases,
            },
            separators=(",", ":"),
        )
        + "\n"
    )
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / "expected.safetensors"))
    print(f"{len(cases)} cases, {sum(c['expect'] == 'match' for c in cases)} expected to match")


if __name__ == "__main__":
    main()
