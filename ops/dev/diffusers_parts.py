"""diffusers' side of ops/dev/cpu-vs-diffusers.sh: the parts `inpaint-worker bench` times, timed
the same way on diffusers' own modules, and the side-by-side table of both.

  python ops/dev/diffusers_parts.py measure [--model full-size-random|embedded-tiny] [--size 512]
                                            [--batch 2] [--repeats 2] [--threads 2]
  python ops/dev/diffusers_parts.py report ENGINE.json DIFFUSERS.json [--json]

`measure` builds the three models (SD-1.5-inpainting's full-size configs from
tests/parity/fullsize_model.py with random weights, or the tiny parity model), then times, as the
engine's bench does (worker/engine/src/pipeline/bench.rs): the text encoder on one 77-token
sequence; VAE encode of one size x size image; VAE decode of one latent; one guided UNet step for
`batch` images, i.e. 2 x batch rows (classifier-free guidance doubles the UNet's batch) of 9
channels at size/8 x size/8 with a 77 x 768 text context and timestep 500. Each part: one untimed
warm-up, then the BEST of `repeats` timed runs (the engine's bench also reports its best). f32,
CPU, torch.no_grad(), diffusers' default attention (scaled_dot_product_attention). Prints one JSON
line with the times, torch's thread count and this process's peak RSS (VmHWM, as the engine's).
"""

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/parity/fixtures/models/tiny-sd-a"
sys.path.insert(0, str(ROOT / "tests/parity"))


def vm_hwm_mib() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def build(model: str):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    if model == "embedded-tiny":
        unet = UNet2DConditionModel.from_pretrained(TINY / "unet")
        vae = AutoencoderKL.from_pretrained(TINY / "vae")
        text = CLIPTextModel.from_pretrained(TINY / "text_encoder")
    else:
        from fullsize_model import TEXT, UNET, VAE  # SD-1.5-inpainting's configs, by hand

        unet = UNet2DConditionModel(**UNET)
        vae = AutoencoderKL(**VAE)
        text = CLIPTextModel(CLIPTextConfig(**TEXT))
    return [m.eval() for m in (unet, vae, text)]  # f32, as built


def best(repeats: int, run) -> float:
    """Seconds: the best of `repeats` timed runs after one untimed warm-up."""
    run()
    times = []
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def measure(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    unet, vae, text = build(args.model)
    load = time.perf_counter() - started
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    side, lat = args.size, args.size // factor
    rows = 2 * args.batch
    positions = text.config.max_position_embeddings
    with torch.no_grad():
        ids = torch.randint(0, text.config.vocab_size, (1, positions))
        text_s = best(args.repeats, lambda: text(ids)[0])
        pixels = torch.rand(1, 3, side, side)
        encode_s = best(args.repeats, lambda: vae.encode(pixels).latent_dist)
        latents = torch.randn(1, vae.config.latent_channels, lat, lat)
        decode_s = best(args.repeats, lambda: vae.decode(latents).sample)
        sample = torch.randn(rows, unet.config.in_channels, lat, lat)
        context = torch.randn(rows, positions, unet.config.cross_attention_dim)
        step_s = best(args.repeats, lambda: unet(sample, 500, encoder_hidden_states=context).sample)
    import diffusers

    print(json.dumps({
        "side": "diffusers", "model": args.model, "size": side, "batch": args.batch, "unet_rows": rows,
        "repeats": args.repeats, "threads": torch.get_num_threads(), "load_seconds": load,
        "text_encoder_ms": text_s * 1e3, "vae_encode_ms": encode_s * 1e3, "vae_decode_ms": decode_s * 1e3,
        "unet_step_ms": step_s * 1e3, "peak_host_mib": vm_hwm_mib(),
        "attention": type(unet.attn_processors[next(iter(unet.attn_processors))]).__name__,
        "diffusers": diffusers.__version__, "torch": torch.__version__,
    }))


def report(args) -> None:
    engine = json.loads(pathlib.Path(args.engine).read_text())
    theirs = json.loads(pathlib.Path(args.diffusers).read_text())
    batch = theirs["batch"]
    step = next((b for b in engine["batches"] if b["images"] == batch), None)
    if step is None:
        sys.exit(f"the engine's bench has no batch of {batch} images")
    ours = {"unet_step_ms": step["unet_step_ms"], "vae_decode_ms": engine["vae_decode_ms"],
            "vae_encode_ms": engine["vae_encode_ms"], "text_encoder_ms": engine["text_encoder_ms"],
            "peak_host_mib": engine["peak_host_mib"], "load_seconds": engine["load_seconds"]}
    rows = [("unet_step_ms", f"UNet step, {batch} images guided ({2 * batch} rows)", "ms"),
            ("vae_decode_ms", f"VAE decode, 1 image {theirs['size']}x{theirs['size']}", "ms"),
            ("vae_encode_ms", f"VAE encode, 1 image {theirs['size']}x{theirs['size']}", "ms"),
            ("text_encoder_ms", "text encoder, 1 x 77 tokens", "ms"),
            ("peak_host_mib", "peak RSS (VmHWM), whole process", "MiB"),
            ("load_seconds", "build the random model", "s")]
    ratios = {key: ours[key] / theirs[key] for key, _, _ in rows}
    if args.json:
        print(json.dumps({"engine": ours, "diffusers": {k: theirs[k] for k in ours},
                          "engine_over_diffusers": ratios,
                          "threads": {"engine": args.engine_threads, "diffusers": theirs["threads"]},
                          "cpu_utilisation": {"engine": args.engine_cpu, "diffusers": args.diffusers_cpu},
                          "model": theirs["model"], "size": theirs["size"], "batch": batch,
                          "repeats": theirs["repeats"], "statistic": "best of repeats after a warm-up",
                          "attention": theirs["attention"], "diffusers_version": theirs["diffusers"],
                          "torch": theirs["torch"], "load": args.load}))
        return
    print(f"{theirs['model']} f32 on the CPU, {args.engine_threads} threads each "
          f"(torch.get_num_threads() = {theirs['threads']} in diffusers); best of {theirs['repeats']} "
          f"after a warm-up; diffusers {theirs['diffusers']}, torch {theirs['torch']}, "
          f"attention {theirs['attention']}")
    print(f"{'':42} {'engine':>10} {'diffusers':>10} {'engine/diffusers':>17}")
    for key, label, unit in rows:
        print(f"{label + ' (' + unit + ')':42} {ours[key]:>10.1f} {theirs[key]:>10.1f} {ratios[key]:>17.3f}")
    print(f"CPU use (user+sys / wall): engine {args.engine_cpu}, diffusers {args.diffusers_cpu}")
    print(f"load average during the run: {args.load}")


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--model", default="full-size-random", choices=["full-size-random", "embedded-tiny"])
    m.add_argument("--size", type=int, default=512)
    m.add_argument("--batch", type=int, default=2)
    m.add_argument("--repeats", type=int, default=2)
    m.add_argument("--threads", type=int, default=2)
    r = sub.add_parser("report")
    r.add_argument("engine")
    r.add_argument("diffusers")
    r.add_argument("--json", action="store_true")
    r.add_argument("--engine-threads", default="?")
    r.add_argument("--engine-cpu", default="?")
    r.add_argument("--diffusers-cpu", default="?")
    r.add_argument("--load", default="?")
    args = parser.parse_args()
    measure(args) if args.command == "measure" else report(args)


if __name__ == "__main__":
    main()
