"""Example decision logic for inpaint-worker's external stages (protocol inpaint-stage.v1).

Shared by verdict_http.py (HTTP stage) and verdict_exec.py (exec stage); Python 3 standard
library only. What it does, driven by command-line options:

before-inference
  * blocks a prompt that contains a word from --block-word / --blocklist (whole words, any
    case): category "operator_blocklist", rule id "blocklist/<n>" (the list position, never the
    word or the prompt);
  * otherwise rewrites listed words (--rewrite OLD=NEW), forces a negative prompt
    (--set-negative) and appends terms to it (--negative), and records which policy version
    did so (metadata "example_policy.version"); with none of these it answers "continue".
after-output
  * measures the image's mean brightness (0..1) and reports it as score "brightness";
  * blocks an image darker than --min-brightness: category "blank_output";
  * replaces the image by its grayscale version with --grayscale;
  * adds metadata "example_policy.checked" = "brightness".

The PNG codec below handles what the worker sends (8-bit, non-interlaced); it is pure Python
and takes about a second for a 512x512 image: a production check would use Pillow or numpy.
"""

import argparse
import base64
import re
import struct
import zlib

PROTOCOL = "inpaint-stage.v1"
POLICY_VERSION = "1"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The policy's options, shared by both transports."""
    parser.add_argument("--block-word", action="append", default=[], metavar="WORD",
                        help="block prompts containing WORD (repeatable)")
    parser.add_argument("--blocklist", metavar="FILE",
                        help="file with one word per line to block (# starts a comment)")
    parser.add_argument("--rewrite", action="append", default=[], metavar="OLD=NEW",
                        help="replace the word OLD by NEW in prompts (repeatable)")
    parser.add_argument("--set-negative", metavar="TEXT",
                        help="replace the negative prompt by TEXT")
    parser.add_argument("--negative", action="append", default=[], metavar="TERM",
                        help="append TERM to the negative prompt (repeatable)")
    parser.add_argument("--min-brightness", type=float, default=None, metavar="X",
                        help="block output images whose mean brightness (0..1) is below X")
    parser.add_argument("--grayscale", action="store_true",
                        help="replace each output image by its grayscale version")


class Policy:
    def __init__(self, args: argparse.Namespace):
        words = list(args.block_word)
        if args.blocklist:
            with open(args.blocklist, encoding="utf-8") as f:
                for line in f:
                    word = line.split("#", 1)[0].strip()
                    if word:
                        words.append(word)
        self.blocklist = [_word_pattern(w) for w in words]
        self.rewrites = []
        for item in args.rewrite:
            old, sep, new = item.partition("=")
            if not sep or not old:
                raise SystemExit(f"--rewrite expects OLD=NEW, got {item!r}")
            self.rewrites.append((_word_pattern(old), new))
        self.set_negative = args.set_negative
        self.negative = list(args.negative)
        self.min_brightness = args.min_brightness
        self.grayscale = args.grayscale

    def decide(self, request: dict) -> dict:
        """One request in, one response out (without "id": the transport adds it)."""
        if request.get("protocol") != PROTOCOL:
            raise ValueError(f"unsupported protocol {request.get('protocol')!r}")
        hook = request["hook"]
        if hook == "before-inference":
            return self.before_inference(request["job"])
        if hook == "after-output":
            return self.after_output(request["image"])
        raise ValueError(f"unknown hook {hook!r}")

    def before_inference(self, job: dict) -> dict:
        prompt = job["prompt"]
        matches = [n for n, pattern in enumerate(self.blocklist) if pattern.search(prompt)]
        if matches:
            return {
                "protocol": PROTOCOL,
                "verdict": "block",
                "category": "operator_blocklist",
                # Never the prompt, nor the matched word: both are user text.
                "reason": "the prompt contains a word on the operator's blocklist",
                "scores": {"blocklist_matches": float(len(matches))},
                "rules": [f"blocklist/{n}" for n in matches],
            }
        changes = []
        rewritten = prompt
        for pattern, new in self.rewrites:
            # A function, so that backslashes in NEW are taken literally.
            rewritten = pattern.sub(lambda _match, new=new: new, rewritten)
        if rewritten != prompt:
            changes.append({"type": "rewrite_prompt", "prompt": rewritten,
                            "category": "operator_rewrite"})
        if self.set_negative is not None:
            changes.append({"type": "set_negative", "negative_prompt": self.set_negative})
        if self.negative:
            changes.append({"type": "append_negative", "terms": self.negative})
        if not changes:
            return {"protocol": PROTOCOL, "verdict": "continue"}
        changes.append({"type": "add_metadata", "key": "example_policy.version",
                        "value": POLICY_VERSION})
        return {"protocol": PROTOCOL, "verdict": "modify", "changes": changes}

    def after_output(self, image: dict) -> dict:
        width, height, channels, pixels = decode_png(base64.b64decode(image["png_base64"]))
        lumas = _lumas(pixels, channels)
        brightness = sum(lumas) / (255.0 * len(lumas)) if lumas else 0.0
        scores = {"brightness": round(brightness, 4)}
        if self.min_brightness is not None and brightness < self.min_brightness:
            return {
                "protocol": PROTOCOL,
                "verdict": "block",
                "category": "blank_output",
                "reason": f"mean brightness {brightness:.3f} is below {self.min_brightness}",
                "scores": scores,
                "rules": ["min_brightness"],
            }
        changes = [
            {"type": "add_scores", "scores": scores},
            {"type": "add_metadata", "key": "example_policy.checked", "value": "brightness"},
        ]
        if self.grayscale:
            gray = bytearray()
            for luma in lumas:
                gray += bytes((luma, luma, luma))
            changes.append({
                "type": "replace_image",
                "png_base64": base64.b64encode(encode_png_rgb(width, height, gray)).decode(),
                "category": "operator_grayscale",
            })
        return {"protocol": PROTOCOL, "verdict": "modify", "changes": changes}


def _word_pattern(word: str) -> "re.Pattern[str]":
    return re.compile(r"\b" + re.escape(word) + r"\b", re.IGNORECASE)


def _lumas(pixels: bytes, channels: int) -> list:
    if channels < 3:  # gray or gray+alpha
        return list(pixels[::channels])
    return [
        (299 * pixels[i] + 587 * pixels[i + 1] + 114 * pixels[i + 2] + 500) // 1000
        for i in range(0, len(pixels), channels)
    ]


def decode_png(data: bytes):
    """(width, height, channels, pixel bytes) of an 8-bit, non-interlaced PNG."""
    if data[:8] != PNG_SIGNATURE:
        raise ValueError("not a PNG")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    if header is None:
        raise ValueError("PNG without IHDR")
    width, height, depth, color, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(color)
    if depth != 8 or interlace != 0 or channels is None:
        raise ValueError("only 8-bit, non-interlaced, non-palette PNGs are supported")
    raw = zlib.decompress(b"".join(idat))
    stride = width * channels
    out = bytearray()
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind = raw[start]
        row = bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            left = row[i - channels] if i >= channels else 0
            up = previous[i]
            if kind == 1:
                row[i] = (row[i] + left) & 0xFF
            elif kind == 2:
                row[i] = (row[i] + up) & 0xFF
            elif kind == 3:
                row[i] = (row[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                up_left = previous[i - channels] if i >= channels else 0
                row[i] = (row[i] + _paeth(left, up, up_left)) & 0xFF
        out += row
        previous = row
    return width, height, channels, bytes(out)


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def encode_png_rgb(width: int, height: int, rgb: bytes) -> bytes:
    """An 8-bit RGB PNG (no filtering)."""
    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))
