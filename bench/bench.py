#!/usr/bin/env python3
"""`make bench`: the DeepSeek-V2-Lite-shaped benchmark end to end, written into README.md.

Writes the random-weight models (bench/gen_model.py) to $BENCH_MODEL_DIR (default bench/models/)
unless they exist, then for each weight type, thread count and loading runs llama-bench's tests (pp64,
tg32, pp512, and pp512 and tg32 at depth 4096) as three `./run <model> --bench` commands (GROUPS), with a
read-bandwidth probe (bench/bandwidth) just before the tg32 one. Prints a table and writes it, with the
commands, between the bench markers of README.md. The tg32 fraction is tg x weight_bytes_per_token /
bandwidth, against the probe's best pass and against its median one (tg32 itself is a mean, not a best run).

If LLAMA_BENCH points at a llama-bench binary (and LLAMA_GGUF_Q8 / LLAMA_GGUF_Q4 at GGUFs of the same
shape), each seek.c command is followed by the same tests on it (IK_LLAMA_BENCH likewise, for ik_llama.cpp,
with its default flags), so that the two engines' rows of a test come minutes apart at most: the shared
host's bandwidth, which generation speed follows, drifts by a third within minutes; the GGUF is read through
the page cache before each of its commands (read_through), as seek.c's run evicts it. Then tg32 alone on both
engines in turn (--pairs times, each seek.c run right after a probe run, so that its bandwidth fraction is
also taken in one minute). Nothing here builds either engine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
README = os.path.join(ROOT, "README.md")
BEGIN, END = "<!-- bench.py: begin -->", "<!-- bench.py: end -->"
TESTS = [("pp64", 0), ("tg32", 0), ("pp512", 0), ("pp512", 4096), ("tg32", 4096)]
# The tests as three commands, (prompts, generated, depths) each: tg32 at depth 0 alone, so that its probe and
# the other engine's tg32 come right before and after it; the depth-4096 tests together, as the fill is slow.
TG32 = ("0", "32", "0")
GROUPS = [("64,512", "0", "0"), TG32, ("512", "32", "4096")]


def run(cmd: list) -> str:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")
    sys.stderr.write(r.stderr[-2000:])
    return r.stdout


def probe(threads: int) -> tuple:
    """One bench/bandwidth run of 7 passes: (its best pass, its median pass), bytes/s."""
    out = run([os.path.join(BENCH, "bandwidth"), str(threads), "2048"])
    return tuple(float(re.search(key + r"=([0-9.]+)", out).group(1)) * 1e9 for key in ("gbps", "median"))


def bandwidth(threads: int) -> tuple:
    """3 probe runs: (the best pass, the median of the runs' median passes), bytes/s. The host is
    shared: passes of one run differ by up to a third, so the best one is a lucky moment."""
    runs = [probe(threads) for _ in range(3)]
    return max(b for b, _ in runs), sorted(m for _, m in runs)[1]


def seek(model: str, threads: int, no_mmap: bool, reps: int, group: tuple) -> tuple:
    """One group of tests: -> ({(test, depth): (tok/s, sd)}, ttft_ms, weight_bytes_per_token, command)"""
    prompts, gens, depths = group
    cmd = ["./run", os.path.relpath(model, ROOT), "--bench", "-p", prompts, "-n", gens, "-d", depths,
           "-r", str(reps), "--threads", str(threads)] + (["--no-mmap"] if no_mmap else [])
    out = run([os.path.join(ROOT, "run")] + cmd[1:])
    res, legacy = {}, {}
    for line in out.splitlines():
        kv = dict(x.split("=", 1) for x in line.split()[1:] if "=" in x)
        if line.startswith("bench test="):
            res[(kv["test"], int(kv["depth"]))] = (float(kv["tok_s"]), float(kv["sd"]))
        elif line.startswith("bench pp="):
            legacy = kv
    return res, float(legacy["ttft_ms"]), float(legacy["weight_bytes_per_token"]), " ".join(cmd)


def read_through(path: str) -> None:
    """Reads a file once so that the page cache holds it. On a 24 GB machine, seek.c's run before (its q8
    file, 16.7 GB, and the copy of it in memory) leaves llama.cpp's GGUF mostly on disk, and llama-bench maps
    it: its repetitions then fault pages in from disk, which no user with the file cached would see."""
    buf = bytearray(64 << 20)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def llama(binary: str, gguf: str, threads: int, reps: int, group: tuple, ik: bool = False) -> tuple:
    """The same tests on llama-bench (its default flags, mmap; its GGUF read through the page cache first):
    -> ({(test, depth): (tok/s, sd)}, command). ik_llama.cpp's llama-bench has no -d: at depth it runs only
    generation, as -gp <depth>,<n> (generated after a prompt of <depth> tokens)."""
    read_through(gguf)
    prompts, gens, depths = group
    if ik and depths != "0":
        tests = ["-p", "0", "-n", "0", "-gp", f"{depths},{gens}"]
    else:
        tests = ["-p", prompts, "-n", gens] + ([] if ik else ["-d", depths])
    cmd = [binary, "-m", gguf] + tests + ["-t", str(threads), "-r", str(reps), "-o", "json"]
    res = {}
    for j in json.loads(run(cmd)):
        test = f"tg{j['n_gen']}" if j["n_gen"] else f"pp{j['n_prompt']}"
        depth = j["n_prompt"] if j["n_gen"] and j["n_prompt"] else j.get("n_depth", 0)  # -gp: after n_prompt tokens
        res[(test, int(depth))] = (float(j["avg_ts"]), float(j["stddev_ts"]))
    return res, " ".join(os.path.basename(c) if c == binary else c for c in cmd)


def alternating_tg32(model: str, binary: str, gguf: str, threads: int, pairs: int) -> str:
    """tg32 alone, seek.c then llama-bench, `pairs` times over: a drift of the host's bandwidth (it moves
    by 20-40% within minutes) then falls on both engines alike. Each seek.c run comes right after a probe
    run, so its tg32 x weight_bytes_per_token is also given against the median pass of the same minute.
    -> a row of the second table."""
    ours, theirs, fracs = [], [], []
    for _ in range(pairs):
        median = probe(threads)[1]
        out = run([os.path.join(ROOT, "run"), model, "--bench", "-p", "0", "-n", "32",
                   "-r", "3", "--threads", str(threads)])
        m = re.search(r"bench test=tg32 depth=0 tok_s=([0-9.]+) \S+ weight_bytes_per_token=([0-9]+)", out)
        ours.append(float(m.group(1)))
        fracs.append(ours[-1] * float(m.group(2)) / median)
        theirs.append(llama(binary, gguf, threads, 3, TG32)[0][("tg32", 0)][0])
    ratio = sum(ours) / sum(theirs)
    return (f"| {os.path.basename(model)} | {threads} | " + ", ".join(f"{x:.2f}" for x in ours) + " | " +
            ", ".join(f"{x:.0%}" for x in fracs) + " | " + ", ".join(f"{x:.2f}" for x in theirs) +
            f" | {ratio:.2f}x |")


def cell(res: dict, key: tuple) -> str:
    if key not in res:
        return "-"
    mean, sd = res[key]
    return f"{mean:.2f} ± {sd:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="q8,q4")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--loading", default="default",
                    help="default (mapped, read into memory by a thread), no-mmap or both (comma list)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=3, help="alternating tg32 runs against llama.cpp (0: none)")
    ap.add_argument("--no-readme", action="store_true", help="print the table, do not write README.md")
    args = ap.parse_args()
    model_dir = os.environ.get("BENCH_MODEL_DIR") or os.path.join(BENCH, "models")
    os.makedirs(model_dir, exist_ok=True)
    head = "| engine | weights | threads | loading | " + " | ".join(
        t + (f" @ d{d}" if d else "") for t, d in TESTS) + " | TTFT ms | GB/token | probe GB/s, best / median pass | tg32 x GB/token / GB/s, best / median |"
    rows, commands = [head, "|" + "---|" * (head.count("|") - 1)], []
    alternating = ["| model | threads | seek.c tg32 | x GB/token / probe median just before | llama.cpp tg32 | "
                   "ratio of the sums |", "|---|---|---|---|---|---|"]
    for dtype in args.dtypes.split(","):
        model = os.path.join(model_dir, f"v2lite-{dtype}.bin")
        if not os.path.exists(model):
            run([sys.executable, os.path.join(BENCH, "gen_model.py"), dtype, model])
        gguf = os.environ.get(f"LLAMA_GGUF_{dtype.upper()}")
        engines = (("LLAMA_BENCH", "llama.cpp"), ("IK_LLAMA_BENCH", "ik_llama.cpp"))
        others = [(os.environ[env], name) for env, name in engines if os.environ.get(env) and gguf]
        for t in map(int, args.threads.split(",")):
            for i, loading in enumerate(args.loading.split(",")):
                paired = others if i == 0 else []  # the other engines once per thread count, beside the first loading
                ours, ttft, theirs = {}, None, {name: {} for _, name in paired}
                for group in GROUPS:
                    if group == TG32:
                        bw = bandwidth(t)  # just before the run it is compared with: the host's bandwidth drifts
                    res, ttft_ms, wb, cmd = seek(model, t, loading == "no-mmap", args.reps, group)
                    ours.update(res)
                    ttft = ttft_ms if ttft is None else ttft
                    commands.append(cmd)
                    for binary, name in paired:
                        res, cmd = llama(binary, gguf, t, args.reps, group, ik=name == "ik_llama.cpp")
                        theirs[name].update(res)
                        commands.append(cmd)
                frac = [ours[("tg32", 0)][0] * wb / b for b in bw]
                rows.append(f"| seek.c | {dtype} | {t} | {loading} | " + " | ".join(cell(ours, k) for k in TESTS) +
                            f" | {ttft:.0f} | {wb / 1e9:.3f} | {bw[0] / 1e9:.1f} / {bw[1] / 1e9:.1f} | {frac[0]:.0%} / {frac[1]:.0%} |")
                print(rows[-1], flush=True)
                for name, res in theirs.items():
                    rows.append(f"| {name} | {dtype} | {t} | mmap | " + " | ".join(cell(res, k) for k in TESTS) +
                                " | - | - | - | - |")
                    print(rows[-1], flush=True)
            if args.pairs and os.environ.get("LLAMA_BENCH") and gguf:
                alternating.append(alternating_tg32(model, os.environ["LLAMA_BENCH"], gguf, t, args.pairs))
                print(alternating[-1], flush=True)
    table = "\n".join(rows)
    if len(alternating) > 2:
        table += (f"\n\ntg32 alone, seek.c (`--bench -p 0 -n 32 -r 3`, right after a probe run) and llama.cpp "
                  f"(`-p 0 -n 32 -d 0 -r 3`) in turn, {args.pairs} times:\n\n" + "\n".join(alternating))
    print("\n" + table)
    if args.no_readme:
        return
    block = (f"{BEGIN}\nWritten by `make bench` ({datetime.date.today()}; tok/s, mean ± sd of {args.reps} runs):\n\n"
             + table + "\n\nCommands:\n\n```\n" + "\n".join(commands) + "\n```\n" + END)
    with open(README, encoding="utf-8") as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        sys.exit(f"bench: README.md has no {BEGIN} ... {END} section to write")
    text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    with open(README, "w", encoding="utf-8") as f:
        f.write(text)
    print("bench: wrote the table into README.md", file=sys.stderr)


if __name__ == "__main__":
    main()
