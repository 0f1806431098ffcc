#!/usr/bin/env python3
"""Parity fixtures for crate inpaint-watermark against invisible-watermark (imwatermark) dwtDct.

Modes:
  generate.py                       write fixtures/ (inputs, the package's outputs, manifest.json)
  generate.py --check-rust-output D compare D/rust_<case>.png (written by the Rust parity test,
                                    `INPAINT_WATERMARK_PARITY_OUT=D cargo test -p inpaint-watermark
                                    --test parity`) with the package's outputs and decode them
                                    with the package
  generate.py --measure D           robustness of the package's marks on D/*.png against Pillow
                                    JPEG (4:4:4 and 4:2:0) at several qualities
  generate.py --compare-bounded D   the package's decoder on the Rust default (bounded, clipping)
                                    encoder's outputs D/rust_<name>.png versus on the package's
                                    own embedding of D/input_<name>.png (payload D/payload.txt);
                                    written by `INPAINT_WATERMARK_BOUNDED_OUT=D cargo test -p
                                    inpaint-watermark --test bounded`. Exit 1 when the package
                                    reads fewer bits from the Rust outputs in total.

It also checks, on all 2^24 inputs, that OpenCV's 8-bit BGR<->YUV conversions equal the
fixed-point formulas the Rust crate implements (plugins/watermark/src/color.rs).

Versions used for the committed fixtures: see manifest.json ("versions").
"""

import argparse
import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pywt
from PIL import Image

import imwatermark
from imwatermark import WatermarkDecoder, WatermarkEncoder
from imwatermark.maxDct import EmbedMaxDct

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
DEFAULT_PAYLOAD = b"StableDiffusionV1-Inpainting"
TXT2IMG_PAYLOAD = b"StableDiffusionV1"


# ---------------------------------------------------------------- colour conversion check
def check_color_formulas():
    """OpenCV's BGR<->YUV (8-bit) equals the fixed-point formulas of color.rs on every input."""
    allc = np.arange(1 << 24, dtype=np.uint32)
    img = np.stack([(allc >> 16) & 255, (allc >> 8) & 255, allc & 255], -1)
    img = img.astype(np.uint8).reshape(4096, 4096, 3)
    b, g, r = [img[..., i].astype(np.int64) for i in range(3)]
    y = (b * 1868 + g * 9617 + r * 4899 + 8192) >> 14
    u = ((b - y) * 8061 + (128 << 14) + 8192) >> 14
    v = ((r - y) * 14369 + (128 << 14) + 8192) >> 14
    mine = np.clip(np.stack([y, u, v], -1), 0, 255)
    assert np.array_equal(mine, cv2.cvtColor(img, cv2.COLOR_BGR2YUV)), "BGR2YUV formula"
    y, u, v = [img[..., i].astype(np.int64) for i in range(3)]
    u, v = u - 128, v - 128
    bb = y + ((u * 33292 + 8192) >> 14)
    gg = y + ((u * -6472 + v * -9519 + 8192) >> 14)
    rr = y + ((v * 18678 + 8192) >> 14)
    mine = np.clip(np.stack([bb, gg, rr], -1), 0, 255)
    assert np.array_equal(mine, cv2.cvtColor(img, cv2.COLOR_YUV2BGR)), "YUV2BGR formula"
    print("OpenCV BGR<->YUV equals the fixed-point formulas on all 2^24 inputs")


# ---------------------------------------------------------------- test images (RGB uint8)
def blobs(rng, h, w, n, sigma):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = np.zeros((h, w, 3))
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        s = rng.uniform(sigma / 2, sigma)
        colour = rng.uniform(-120, 120, 3)
        out += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None] * colour
    return out


def make_images():
    rng = np.random.default_rng(20240611)
    images = {}

    # Smooth colour gradients with mild noise.
    h, w = 256, 256
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([40 + 180 * xx / w, 60 + 140 * yy / h, 200 - 120 * (xx + yy) / (w + h)], -1)
    img += rng.normal(0, 2, img.shape)
    images["gradient"] = img

    # A "scene": blurred colour blobs, a few hard-edged shapes, texture and noise.
    h, w = 288, 320
    img = 128 + blobs(rng, h, w, 14, 70)
    yy, xx = np.mgrid[0:h, 0:w]
    img[40:120, 200:290] = [30, 90, 200]
    img[((yy - 200) ** 2 + (xx - 90) ** 2) < 45**2] = [230, 200, 40]
    img[150:160, :] = [250, 250, 250]
    img += 12 * np.sin(xx / 3.0)[..., None] * (yy > 230)[..., None]
    img += rng.normal(0, 3, img.shape)
    images["scene"] = img

    # Saturated primaries (U and V near their extremes) with noise; sides not multiples of 8.
    h, w = 258, 262
    img = np.zeros((h, w, 3))
    colours = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255]]
    for i, colour in enumerate(colours):
        img[:, i * w // 6 : (i + 1) * w // 6] = colour
    img[h // 2 :] = img[h // 2 :] * 0.6
    img += rng.normal(0, 6, img.shape)
    images["saturated"] = img

    # Exactly 256*256 pixels, but 1024x64: the package checks the pixel count, not each side.
    h, w = 64, 1024
    img = 128 + blobs(rng, h, w, 10, 30) + rng.normal(0, 3, (h, w, 3))
    images["wide"] = img

    return {k: np.clip(np.rint(v), 0, 255).astype(np.uint8) for k, v in images.items()}


# ---------------------------------------------------------------- the package
def embed(rgb, bits):
    encoder = WatermarkEncoder()
    encoder.set_by_bits(bits)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return cv2.cvtColor(encoder.encode(bgr, "dwtDct"), cv2.COLOR_BGR2RGB)


def decode(rgb, n):
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    return [int(b) for b in WatermarkDecoder("bits", n).decode(bgr, "dwtDct")]


def votes(rgb, n):
    """Per-bit [ones, total], computed with the package's own steps (EmbedMaxDct.decode)."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    row, col, _ = bgr.shape
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    ca1, _ = pywt.dwt2(yuv[: row // 4 * 4, : col // 4 * 4, 1], "haar")
    embed = EmbedMaxDct(watermarks=[], wmLen=n)
    scores = embed.decode_frame(ca1, 36, [[] for _ in range(n)])
    return [[int(sum(s)), len(s)] for s in scores]


def bits_of(payload):
    return [int(b) for b in np.unpackbits(np.frombuffer(payload, dtype=np.uint8))]


def bit_str(bits):
    return "".join(str(int(b)) for b in bits)


def save_png(path, rgb):
    Image.fromarray(rgb).save(path, optimize=True)


def load_png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def cases():
    rng = np.random.default_rng(7)
    odd_bits = [int(b) for b in rng.integers(0, 2, 37)]
    return [
        ("gradient-default", "gradient", bits_of(DEFAULT_PAYLOAD)),
        ("scene-default", "scene", bits_of(DEFAULT_PAYLOAD)),
        ("scene-txt2img", "scene", bits_of(TXT2IMG_PAYLOAD)),
        ("saturated-default", "saturated", bits_of(DEFAULT_PAYLOAD)),
        ("wide-default", "wide", bits_of(DEFAULT_PAYLOAD)),
        ("gradient-37bits", "gradient", odd_bits),
    ]


def generate():
    check_color_formulas()
    FIXTURES.mkdir(exist_ok=True)
    images = make_images()
    manifest = {
        "versions": {
            "invisible-watermark": "0.2.0",
            "opencv": cv2.__version__,
            "pywavelets": pywt.__version__,
            "numpy": np.__version__,
        },
        "inputs": {},
        "cases": [],
    }
    for name, rgb in images.items():
        save_png(FIXTURES / f"input_{name}.png", rgb)
        manifest["inputs"][name] = {"file": f"input_{name}.png", "width": rgb.shape[1], "height": rgb.shape[0]}
    for case, image, bits in cases():
        rgb = images[image]
        out = embed(rgb, bits)
        save_png(FIXTURES / f"python_{case}.png", out)
        assert np.array_equal(load_png(FIXTURES / f"python_{case}.png"), out)
        decoded = decode(out, len(bits))
        matched = sum(a == b for a, b in zip(decoded, bits))
        print(f"{case}: {matched}/{len(bits)} bits read back by the package")
        manifest["cases"].append(
            {
                "name": case,
                "input": image,
                "payload_bits": bit_str(bits),
                "python_output": f"python_{case}.png",
                "decoded_output": bit_str(decoded),
                "votes_output": votes(out, len(bits)),
                "decoded_input": bit_str(decode(rgb, len(bits))),
                "votes_input": votes(rgb, len(bits)),
            }
        )
    (FIXTURES / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in FIXTURES.iterdir())
    print(f"wrote {len(list(FIXTURES.iterdir()))} files, {total / 1e6:.2f} MB")


def check_rust_output(directory):
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    failures = 0
    for case in manifest["cases"]:
        rust = load_png(Path(directory) / f"rust_{case['name']}.png")
        python = load_png(FIXTURES / case["python_output"])
        identical = np.array_equal(rust, python)
        bits = [int(c) for c in case["payload_bits"]]
        decoded = decode(rust, len(bits))
        matched = sum(a == b for a, b in zip(decoded, bits))
        same_read = bit_str(decoded) == case["decoded_output"]
        print(
            f"{case['name']}: byte-identical={identical} package reads {matched}/{len(bits)} "
            f"payload bits (same bits as from its own output: {same_read})"
        )
        failures += (not identical) + (not same_read)
    return failures


def measure(directory):
    bits = bits_of(DEFAULT_PAYLOAD)
    rows = []
    for path in sorted(Path(directory).glob("*.png")):
        rgb = load_png(path)
        marked = embed(rgb, bits)
        row = {"image": path.stem, "none": sum(a == b for a, b in zip(decode(marked, len(bits)), bits))}
        for quality in (95, 90, 75):
            for subsampling, label in ((0, "444"), (2, "420")):
                buf = io.BytesIO()
                Image.fromarray(marked).save(buf, "JPEG", quality=quality, subsampling=subsampling)
                back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
                decoded = decode(back, len(bits))
                row[f"q{quality}-{label}"] = sum(a == b for a, b in zip(decoded, bits))
        rows.append(row)
    keys = list(rows[0].keys())[1:]
    print("bits matched of 224 (payload StableDiffusionV1-Inpainting), Pillow JPEG")
    print("image".ljust(16) + "".join(k.rjust(10) for k in keys))
    for row in rows:
        print(row["image"].ljust(16) + "".join(str(row[k]).rjust(10) for k in keys))


def compare_bounded(directory):
    directory = Path(directory)
    bits = [int(c) for c in (directory / "payload.txt").read_text().strip()]
    print(f"bits matched of {len(bits)} by the package's decoder; max |change| per channel (R, G, B)")
    print(f"{'image':18}{'package embed':>15}{'rust bounded':>14}   {'package change':18}{'rust change':14}")
    totals = [0, 0]
    for path in sorted(directory.glob("input_*.png")):
        name = path.stem[len("input_"):]
        rgb = load_png(path)
        ours = load_png(directory / f"rust_{name}.png")
        theirs = embed(rgb, bits)
        read = [sum(a == b for a, b in zip(decode(img, len(bits)), bits)) for img in (theirs, ours)]
        change = [
            tuple(int(v) for v in np.abs(img.astype(int) - rgb.astype(int)).reshape(-1, 3).max(axis=0))
            for img in (theirs, ours)
        ]
        totals[0] += read[0]
        totals[1] += read[1]
        print(f"{name:18}{read[0]:>15}{read[1]:>14}   {str(change[0]):18}{str(change[1]):14}")
    print(f"{'total':18}{totals[0]:>15}{totals[1]:>14}")
    return totals[1] < totals[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check-rust-output", metavar="DIR")
    parser.add_argument("--measure", metavar="DIR")
    parser.add_argument("--compare-bounded", metavar="DIR")
    args = parser.parse_args()
    if args.compare_bounded:
        sys.exit(1 if compare_bounded(args.compare_bounded) else 0)
    if args.check_rust_output:
        sys.exit(1 if check_rust_output(args.check_rust_output) else 0)
    if args.measure:
        measure(args.measure)
        return
    generate()


if __name__ == "__main__":
    main()
