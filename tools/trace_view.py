#!/usr/bin/env python3
"""Draws the expert load of a `./run --trace` file and prints a text summary.

    ./run models/shakespeare.bin --ppl passage.txt --trace trace.jsonl
    python3 tools/trace_view.py trace.jsonl -o expert-load.png

The trace has one JSON line per token the model read (see README, "Routing trace"):

    {"pos": 3, "id": 297, "text": " I", "layers": [{"layer": 0},
     {"layer": 1, "experts": [[5, 1.49], [0, 1.01]]}, ...,
     {"layer": 4, "experts": [...], "attention": [[[0, 0.95], [2, 0.05], ...], ...]}]}

The picture is a heatmap with one row per MoE layer and one column per routed expert; a cell's colour is
the share of that layer's routing choices that went to the expert (white: none, dark: the most). With
uniform routing every cell would be 1 / n_experts. The PNG is written by hand (zlib from the standard
library), so this needs plain Python 3 only.
"""
import argparse
import json
import os
import struct
import sys
import zlib

# 3x5 pixel glyphs for the labels, one string of 5 rows of 3 bits per character.
GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "%": "101001010100101",
    " ": "000000000000000", "L": "100100100100111", "E": "111100111100111",
}

# A light-to-dark ramp (white, yellow, orange, red, dark purple): shares map onto it linearly.
RAMP = [(255, 255, 255), (255, 237, 160), (253, 141, 60), (215, 48, 31), (84, 0, 80)]


class TraceError(Exception):
    pass


def read_trace(path: str):
    """-> (counts {layer: {expert: n}}, weights {layer: {expert: sum}}, attention tops {(layer, head): [pos
    of the top position, query pos]}, number of tokens)."""
    counts, weights, tops, n_tokens = {}, {}, {}, 0
    try:
        f = sys.stdin if path == "-" else open(path, encoding="utf-8")
    except OSError as e:
        raise TraceError(f"cannot open {path}: {e.strerror}")
    with f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                pos = int(rec["pos"])
                for layer in rec["layers"]:
                    l = int(layer["layer"])
                    for e, w in layer.get("experts", []):
                        counts.setdefault(l, {}).setdefault(int(e), 0)
                        counts[l][int(e)] += 1
                        weights.setdefault(l, {}).setdefault(int(e), 0.0)
                        weights[l][int(e)] += float(w)
                    for h, head in enumerate(layer.get("attention", [])):
                        tops.setdefault((l, h), []).append((int(head[0][0]), pos))
            except (ValueError, KeyError, TypeError, IndexError) as e:
                raise TraceError(f"{path}:{lineno}: not a --trace line ({type(e).__name__}: {e})")
            n_tokens += 1
    if not counts:
        raise TraceError(f"{path}: no routing choices in it (no MoE layers, or an empty trace)")
    return counts, weights, tops, n_tokens


def shares(counts: dict, n_experts: int):
    """-> [(layer, [share of each expert])], layers in order."""
    rows = []
    for l in sorted(counts):
        total = sum(counts[l].values())
        rows.append((l, [counts[l].get(e, 0) / total for e in range(n_experts)]))
    return rows


def colour(x: float):
    """RGB of x in [0, 1] on RAMP."""
    x = min(max(x, 0.0), 1.0) * (len(RAMP) - 1)
    i = min(int(x), len(RAMP) - 2)
    t = x - i
    return tuple(round(a + (b - a) * t) for a, b in zip(RAMP[i], RAMP[i + 1]))


class Canvas:
    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.pixels = bytearray(b"\xff" * (3 * width * height))

    def rect(self, x: int, y: int, w: int, h: int, rgb):
        for yy in range(max(y, 0), min(y + h, self.height)):
            for xx in range(max(x, 0), min(x + w, self.width)):
                self.pixels[3 * (yy * self.width + xx):3 * (yy * self.width + xx) + 3] = bytes(rgb)

    def text(self, x: int, y: int, s: str, scale: int = 2, rgb=(0, 0, 0)):
        for ch in s:
            bits = GLYPHS.get(ch, GLYPHS[" "])
            for r in range(5):
                for c in range(3):
                    if bits[3 * r + c] == "1":
                        self.rect(x + c * scale, y + r * scale, scale, scale, rgb)
            x += 4 * scale

    def png(self) -> bytes:
        def chunk(tag: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        stride = 3 * self.width
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride:(y + 1) * stride]) for y in range(self.height))
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def text_width(s: str, scale: int = 2) -> int:
    return 4 * scale * len(s)


def heatmap(rows, n_experts: int, cell: int) -> Canvas:
    """Rows of shares -> the picture: layer labels on the left, expert numbers on top, a colour bar below."""
    top_share = max(max(r) for _, r in rows)
    left, top, gap = text_width("L00") + 10, 5 * 2 + 14, 1
    width = left + n_experts * (cell + gap) + 10
    legend_y = top + len(rows) * (cell + gap) + 12
    height = legend_y + 12 + 5 * 2 + 10
    c = Canvas(max(width, left + 200), height)
    for e in range(n_experts):
        label = str(e)
        c.text(left + e * (cell + gap) + (cell - text_width(label)) // 2, 6, label)
    for i, (l, r) in enumerate(rows):
        y = top + i * (cell + gap)
        c.text(4, y + (cell - 10) // 2, f"L{l}")
        for e, share in enumerate(r):
            c.rect(left + e * (cell + gap), y, cell, cell, colour(share / top_share if top_share else 0.0))
    bar = min(160, c.width - left - 10)
    for x in range(bar):
        c.rect(left + x, legend_y, 1, 10, colour(x / max(bar - 1, 1)))
    c.text(left, legend_y + 14, "0")
    label = f"{100 * top_share:.1f}%"
    c.text(left + bar - text_width(label), legend_y + 14, label)
    return c


def summary(counts: dict, weights: dict, tops: dict, n_tokens: int, n_experts: int) -> str:
    lines = [f"{n_tokens} tokens; {len(counts)} MoE layers x {n_experts} routed experts"]
    lines.append("layer  used  max share  min share  max/min  top experts (share, mean gate weight)")
    for l, r in shares(counts, n_experts):
        used = sum(1 for x in r if x > 0)
        lo, hi = min(r), max(r)
        ratio = f"{hi / lo:7.2f}" if lo > 0 else "    inf"
        best = sorted(range(n_experts), key=lambda e: -r[e])[:3]
        tops_txt = ", ".join(f"{e} ({100 * r[e]:.1f}%, {weights[l][e] / counts[l][e]:.3f})" for e in best if r[e] > 0)
        lines.append(f"{l:5d}  {used:2d}/{n_experts:<2d}  {100 * hi:8.1f}%  {100 * lo:8.1f}%  {ratio}  {tops_txt}")
    if tops:
        layer = min(l for l, _ in tops)
        lines.append(f"attention in layer {layer}: per head, how often its most attended position is the first"
                     " (position 0), the token itself, and the mean distance back to it")
        for (l, h) in sorted(tops):
            t = tops[(l, h)]
            first = sum(1 for p, q in t if p == 0) / len(t)
            itself = sum(1 for p, q in t if p == q) / len(t)
            dist = sum(q - p for p, q in t) / len(t)
            lines.append(f"  head {h:2d}: first {100 * first:5.1f}%  itself {100 * itself:5.1f}%  mean distance {dist:6.1f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description="Expert-load heatmap (PNG) and a text summary of a ./run --trace file.")
    ap.add_argument("trace", help="the JSON-lines file ./run --trace wrote ('-' = stdin)")
    ap.add_argument("-o", "--output", default="expert-load.png", help="PNG to write (default: expert-load.png)")
    ap.add_argument("--experts", type=int, default=0,
                    help="number of routed experts (default: the highest expert id in the trace + 1)")
    ap.add_argument("--cell", type=int, default=24, help="cell size in pixels (default 24)")
    args = ap.parse_args()
    try:
        if args.cell < 2 or args.cell > 200:
            raise TraceError("--cell must be in 2..200")
        counts, weights, tops, n_tokens = read_trace(args.trace)
        seen = 1 + max(e for l in counts for e in counts[l])
        n_experts = args.experts or seen
        if n_experts < seen:
            raise TraceError(f"--experts {n_experts} is less than the experts in the trace ({seen})")
        rows = shares(counts, n_experts)
        png = heatmap(rows, n_experts, args.cell).png()
        tmp = args.output + ".tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(png)
            os.replace(tmp, args.output)
        except OSError as e:
            raise TraceError(f"cannot write {args.output}: {e.strerror}")
        print(summary(counts, weights, tops, n_tokens, n_experts))
        print(f"wrote {args.output}")
    except TraceError as e:
        print(f"trace_view.py: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
