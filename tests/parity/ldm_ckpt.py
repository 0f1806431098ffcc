"""diffusers -> original CompVis/LDM single-file checkpoint key mapping (SD-1.x layout).

The inverse of diffusers' `loaders/single_file_utils.py` (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`), written for any SD-1.x-style config
(`CrossAttnDownBlock2D`/`DownBlock2D`, `UNetMidBlock2DCrossAttn`, `UpBlock2D`/`CrossAttnUpBlock2D`,
`DownEncoderBlock2D`/`UpDecoderBlock2D`).

Prefixes: UNet `model.diffusion_model.`, VAE `first_stage_model.`, text encoder
`cond_stage_model.transformer.text_model.`.  The only tensor change: the VAE mid-block attention
q/k/v/proj_out weights are 1x1 convolutions in LDM ([C, C, 1, 1]) and Linear in diffusers ([C, C]).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

UNET_RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_RESNET_RENAMES = {"conv_shortcut": "nin_shortcut"}  # norm1/conv1/norm2/conv2 keep their names
VAE_ATTN_RENAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_first(rest: str, renames: dict) -> str:
    for old, new in renames.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def unet_module_map(config) -> list[tuple[str, str, dict]]:
    """(diffusers module prefix, ldm module prefix, renames for the remainder)."""
    L = config["layers_per_block"]
    nb = len(config["block_out_channels"])
    m = [
        ("time_embedding.linear_1", "time_embed.0", {}),
        ("time_embedding.linear_2", "time_embed.2", {}),
        ("conv_in", "input_blocks.0.0", {}),
        ("conv_norm_out", "out.0", {}),
        ("conv_out", "out.2", {}),
        ("mid_block.resnets.0", "middle_block.0", UNET_RESNET_RENAMES),
        ("mid_block.attentions.0", "middle_block.1", {}),
        ("mid_block.resnets.1", "middle_block.2", UNET_RESNET_RENAMES),
    ]
    for i in range(nb):
        for j in range(L):
            idx = 1 + i * (L + 1) + j
            m.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{idx}.0", UNET_RESNET_RENAMES))
            m.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{idx}.1", {}))
        if i < nb - 1:
            m.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * (L + 1)}.0.op", {}))
    for i in range(nb):
        has_attn = config["up_block_types"][i].startswith("CrossAttn")
        for j in range(L + 1):
            idx = i * (L + 1) + j
            m.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{idx}.0", UNET_RESNET_RENAMES))
            m.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{idx}.1", {}))
        if i < nb - 1:
            m.append((f"up_blocks.{i}.upsamplers.0.conv",
                      f"output_blocks.{i * (L + 1) + L}.{2 if has_attn else 1}.conv", {}))
    return m


def vae_module_map(config) -> list[tuple[str, str, dict]]:
    nb = len(config["block_out_channels"])
    L = config["layers_per_block"]
    m = [("quant_conv", "quant_conv", {}), ("post_quant_conv", "post_quant_conv", {})]
    for part in ("encoder", "decoder"):
        m += [
            (f"{part}.conv_in", f"{part}.conv_in", {}),
            (f"{part}.conv_out", f"{part}.conv_out", {}),
            (f"{part}.conv_norm_out", f"{part}.norm_out", {}),
            (f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", VAE_RESNET_RENAMES),
            (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", VAE_RESNET_RENAMES),
            (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", VAE_ATTN_RENAMES),
        ]
    for i in range(nb):
        for j in range(L):
            m.append((f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", VAE_RESNET_RENAMES))
        if i < nb - 1:
            m.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", {}))
    for i in range(nb):
        k = nb - 1 - i  # LDM decoder.up is indexed from the lowest resolution upwards
        for j in range(L + 1):
            m.append((f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{k}.block.{j}", VAE_RESNET_RENAMES))
        if i < nb - 1:
            m.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{k}.upsample.conv", {}))
    return m


def _map_key(key: str, module_map) -> str:
    best = None
    for dprefix, lprefix, renames in module_map:
        if key.startswith(dprefix + ".") and (best is None or len(dprefix) > len(best[0])):
            best = (dprefix, lprefix, renames)
    if best is None:
        raise KeyError(f"no LDM mapping for {key}")
    dprefix, lprefix, renames = best
    return lprefix + "." + _rename_first(key[len(dprefix) + 1:], renames)


def key_map(pipe) -> dict[str, dict]:
    """diffusers component key -> {ldm key, transform}."""
    out = {}
    umap = unet_module_map(pipe.unet.config)
    for k in pipe.unet.state_dict():
        out[f"unet/{k}"] = {"ldm": UNET_PREFIX + _map_key(k, umap), "transform": None}
    vmap = vae_module_map(pipe.vae.config)
    for k, v in pipe.vae.state_dict().items():
        ldm = VAE_PREFIX + _map_key(k, vmap)
        t = "linear_to_conv1x1" if ".mid.attn_1." in ldm and v.ndim == 2 else None
        out[f"vae/{k}"] = {"ldm": ldm, "transform": t}
    for k in pipe.text_encoder.state_dict():
        kk = k if k.startswith("text_model.") else "text_model." + k
        out[f"text_encoder/{k}"] = {"ldm": CLIP_PREFIX + kk, "transform": None}
    return out


def to_ldm_state_dict(pipe, kmap) -> dict[str, torch.Tensor]:
    sd = {}
    comps = {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder}
    for name, module in comps.items():
        for k, v in module.state_dict().items():
            e = kmap[f"{name}/{k}"]
            t = v.detach().clone().contiguous()
            if e["transform"] == "linear_to_conv1x1":
                t = t[:, :, None, None].contiguous()
            assert e["ldm"] not in sd, e["ldm"]
            sd[e["ldm"]] = t
    return sd


def _same_state(a: dict, b: dict, what: str):
    assert set(a) == set(b), (what, sorted(set(a) ^ set(b))[:10])
    for k in a:
        assert torch.equal(a[k], b[k]), (what, k)


def write_and_verify(pipe, model_dir: Path, models_dir: Path, fixtures: Path) -> dict:
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    kmap = key_map(pipe)
    sd = to_ldm_state_dict(pipe, kmap)
    ckpt = models_dir / f"{model_dir.name}.ckpt.safetensors"
    save_file(dict(sorted(sd.items())), str(ckpt), metadata={"format": "pt"})
    (fixtures / "ckpt_key_map.json").write_text(json.dumps({
        "model": model_dir.name,
        "checkpoint": str(ckpt.relative_to(fixtures)),
        "description": "diffusers component/key -> key in the CompVis/LDM single-file checkpoint. transform "
        "'linear_to_conv1x1': the diffusers Linear weight [C, C] is stored as [C, C, 1, 1].",
        "map": kmap,
    }, indent=1) + "\n")

    # 1. diffusers' own LDM -> diffusers converters must give back exactly our state dicts.
    loaded = load_file(str(ckpt))
    _same_state(convert_ldm_unet_checkpoint(loaded, dict(pipe.unet.config)), pipe.unet.state_dict(), "unet")
    _same_state(convert_ldm_vae_checkpoint(loaded, dict(pipe.vae.config)), pipe.vae.state_dict(), "vae")
    te = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in pipe.text_encoder.state_dict().items()}
    _same_state(convert_ldm_clip_checkpoint(loaded), te, "text_encoder")

    # 2. Full load through from_single_file, offline, with the model folder as `config`.
    report = {"checkpoint": str(ckpt.relative_to(fixtures)), "config_folder": str(model_dir.relative_to(fixtures))}
    try:
        sf = StableDiffusionInpaintPipeline.from_single_file(
            str(ckpt), config=str(model_dir), local_files_only=True, safety_checker=None,
            requires_safety_checker=False,
        )
        for name in ("unet", "vae", "text_encoder"):
            _same_state(getattr(sf, name).state_dict(), getattr(pipe, name).state_dict(), f"from_single_file {name}")
        report["from_single_file"] = "ok: unet/vae/text_encoder state dicts identical to the folder model"
        report["from_single_file_scheduler"] = type(sf.scheduler).__name__
    except Exception as e:  # keep the fixture usable even if a diffusers version changes this path
        report["from_single_file"] = f"failed: {type(e).__name__}: {e}"
    return report
