"""Multi-token prediction (issue 16): export.py --mtp keeps the MTP module (DeepSeek-V3 2.2), run.c --mtp
drafts with it and verifies the draft in one batched step (speculative decoding).

Independent references:
- the MTP logits of the shipped model from train.py's own PyTorch forward pass (tests/data/shakespeare_mtp.*,
  checked against the numpy reference in test_shakespeare.py), against run.c --mtp --dump-logits;
- greedy output without --mtp (the main model alone): drafting must not change a single byte of it;
- the draft acceptance count that the fixture's MTP argmaxes predict for a greedy continuation;
- the speculative-sampling rule against the target distribution p computed here (tests/hooks.c calls
  run.c's sampler_probs, draw and speculate on logits chosen here), and end to end: the distribution of
  sampled tokens with and without --mtp (two-sample chi-square over fixed seeds).
"""
import json
import math
import os
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import reference
from test_cli import assert_distribution, expected, hooks  # noqa: F401 (hooks: the compiled tests/hooks.c)
from test_export import make_checkpoint, V3_CONFIG
from test_engine import read_model_file

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
EXPORT = os.environ.get("SEEK_EXPORT") or os.path.join(ROOT, "export.py")
CKPT = os.path.join(ROOT, "models", "shakespeare")
SHIPPED = os.path.join(ROOT, "models", "shakespeare.bin")
MTP = os.path.join(TESTS, "data", "shakespeare_mtp.json")
GREEDY = os.path.join(TESTS, "data", "shakespeare_greedy.json")
PROMPTS = ["ROMEO:", "JULIET:\nO Romeo, Romeo!", "First Citizen:\nBefore we proceed any further, hear me speak.",
           "KING RICHARD III:\nNow is the winter", "<｜User｜>Who art thou?<｜Assistant｜>"]


def run(run_bin, *args, timeout=300):
    return subprocess.run([run_bin, *map(str, args)], capture_output=True, timeout=timeout)


def ok(p):
    assert p.returncode == 0 and b"Sanitizer" not in p.stderr, p.stderr.decode(errors="replace")[-3000:]
    return p


def one_error(p, *words):
    lines = p.stderr.decode(errors="replace").strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and p.stdout == b"", (p.returncode, lines)
    assert all(w in lines[0] for w in words), lines[0]


def export(out, *args, ckpt=CKPT):
    return subprocess.run([sys.executable, EXPORT, ckpt, str(out), *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def mtp_bin(tmp_path_factory):
    """The shipped checkpoint exported with its MTP module (bf16, as models/shakespeare.bin)."""
    out = tmp_path_factory.mktemp("mtp") / "shakespeare-mtp.bin"
    p = export(out, "--dtype", "bf16", "--mtp")
    assert p.returncode == 0, p.stderr
    return str(out)


def mtp_fixture():
    with open(MTP) as f:
        fx = json.load(f)
    rows = np.fromfile(os.path.join(TESTS, "data", fx["file"]), "<f4").reshape(fx["rows"], fx["vocab_size"])
    return fx, rows


# ---------------------------------------------------------------- export --mtp

def test_export_keeps_the_mtp_module_after_lm_head(mtp_bin):
    m, plain = read_model_file(mtp_bin), read_model_file(SHIPPED)
    N = reference.load(CKPT).cfg["num_hidden_layers"]
    assert m["ints"][34] == 1 and plain["ints"][34] == 0
    names = [t["name"] for t in m["tensors"]]
    head = names.index("lm_head.weight")
    assert names[:head + 1] == [t["name"] for t in plain["tensors"]][:head + 1]
    p = f"model.layers.{N}."
    block = [n.replace(f"model.layers.{N - 1}.", p) for n in names if n.startswith(f"model.layers.{N - 1}.")]
    assert names[head + 1:] == [p + "enorm.weight", p + "hnorm.weight", p + "eh_proj.weight"] + block + \
        [p + "shared_head.norm.weight", "tokenizer"]
    # the embedding and head copies are not stored: the checkpoint's equal the main model's (shared)
    assert not any(n.endswith(("embed_tokens.weight", "shared_head.head.weight")) and n.startswith(p) for n in names)


def test_export_mtp_quantizes_the_block_like_the_main_layers(tmp_path, run_bin):
    out = tmp_path / "q8.bin"
    assert export(out, "--dtype", "q8", "--mtp").returncode == 0
    types = {t["name"]: t["type"] for t in read_model_file(str(out))["tensors"]}
    p = f"model.layers.{reference.load(CKPT).cfg['num_hidden_layers']}."
    for suffix in ("eh_proj.weight", "self_attn.q_a_proj.weight", "self_attn.kv_b_proj.weight",
                   "mlp.experts.3.down_proj.weight", "mlp.shared_experts.up_proj.weight"):
        assert types[p + suffix] == "Q8", suffix
    for suffix in ("mlp.gate.weight", "enorm.weight", "hnorm.weight", "shared_head.norm.weight"):
        assert types[p + suffix] == "F32", suffix
    prompt = ",".join(map(str, json.load(open(GREEDY))[0]["prompt_ids"]))
    want = ok(run(run_bin, out, "--tokens", prompt, "-n", "64", "-t", "0", "--print-ids")).stdout
    assert ok(run(run_bin, out, "--tokens", prompt, "-n", "64", "-t", "0", "--print-ids", "--mtp")).stdout == want


def test_export_mtp_without_module_fails_in_one_line(tmp_path, checkpoint):
    p = export(tmp_path / "x.bin", "--mtp", ckpt=checkpoint("v3"))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "--mtp" in lines[0] and "no MTP module" in lines[0], p.stderr
    assert not (tmp_path / "x.bin").exists()


def test_export_mtp_refuses_unequal_shared_copies(tmp_path):
    """The file stores the embedding and head once (DeepSeek-V3 2.2 shares them); a checkpoint whose
    MTP copies differ (here: random ones) is refused in one line, not silently exported."""
    make_checkpoint(tmp_path / "hf", V3_CONFIG, mtp=True)
    p = export(tmp_path / "x.bin", "--mtp", ckpt=str(tmp_path / "hf"))
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "embed_tokens.weight differs" in lines[0], p.stderr
    assert export(tmp_path / "y.bin", ckpt=str(tmp_path / "hf")).returncode == 0  # without --mtp: skipped


# ---------------------------------------------------------------- run.c: loading

def test_mtp_flag_on_a_file_without_mtp_is_one_error(run_bin):
    one_error(run(run_bin, SHIPPED, "-i", "ROMEO:", "--mtp"), "--mtp", "no MTP module", "export.py --mtp")


def test_missing_or_corrupt_mtp_section_is_one_error(run_bin, mtp_bin, tmp_path):
    plain = read_model_file(SHIPPED)
    bad = tmp_path / "claims-mtp.bin"  # word 34 says 1, but no MTP section follows lm_head
    bad.write_bytes(plain["buf"][:12 + 4 * 34] + struct.pack("<i", 1) + plain["buf"][12 + 4 * 35:])
    one_error(run(run_bin, bad, "-i", "x"), "enorm.weight")
    m = read_model_file(mtp_bin)
    k = [t["name"] for t in m["tensors"]].index("model.layers.5.eh_proj.weight")
    at = 12 + 4 * 64 + 4 + 128 * k + 104  # its rows: [D, 2D] -> [D, D]
    buf = bytearray(m["buf"])
    buf[at + 4:at + 8] = struct.pack("<I", 256)
    (tmp_path / "eh.bin").write_bytes(bytes(buf))
    one_error(run(run_bin, tmp_path / "eh.bin", "-i", "x"), "eh_proj.weight", "shape")
    ok(run(run_bin, mtp_bin, "-i", "ROMEO:", "-n", "4"))  # without --mtp a file with MTP runs as before


# ---------------------------------------------------------------- run.c: the MTP module against PyTorch

@pytest.mark.parametrize("ub", [64, 7])
def test_mtp_logits_match_pytorch(run_bin, mtp_bin, tmp_path, ub):
    """--mtp --dump-logits writes the MTP rows (T-1, V) of --tokens: row r from the main model's hidden
    state at r and token r+1. Within 1e-4 of train.py's float64 forward pass (measured 4.8e-6); -ub 7
    splits the sequences into chunks, so the MTP block's cache is built across chunk boundaries."""
    fx, rows = mtp_fixture()
    for s in fx["sequences"]:
        out = tmp_path / "mtp.logits"
        ok(run(run_bin, mtp_bin, "--mtp", "--tokens", ",".join(map(str, s["ids"])), "--dump-logits", out, "-ub", ub))
        got = np.fromfile(out, "<f4").reshape(-1, fx["vocab_size"])
        want = rows[s["row_offset"]:s["row_offset"] + s["n_rows"]]
        assert got.shape == want.shape, s["name"]
        err = np.abs(got.astype(np.float64) - want).max()
        assert err < 1e-4, f"{s['name']}: run.c's MTP logits differ from PyTorch's by {err:.2e}"


# ---------------------------------------------------------------- speculative decoding, greedy

@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_output_is_unchanged_by_mtp(run_bin, mtp_bin, prompt):
    """256 tokens at temperature 0: byte-identical text with and without drafting (the 2-token verify
    step computes each row exactly as a 1-token step does)."""
    args = [mtp_bin, "-i", prompt, "-n", "256", "-t", "0"]
    want = ok(run(run_bin, *args)).stdout
    p = ok(run(run_bin, *args, "--mtp"))
    assert p.stdout == want
    assert b"drafts accepted" in p.stderr


def test_greedy_ids_unchanged_by_mtp_bf16_cache_one_thread(run_bin, mtp_bin):
    args = [mtp_bin, "-i", PROMPTS[2], "-n", "200", "-t", "0", "--print-ids", "--cache-type", "bf16", "--threads", "1"]
    assert ok(run(run_bin, *args, "--mtp")).stdout == ok(run(run_bin, *args)).stdout


def expected_acceptance(ids: list, n_prompt: int, mtp_argmax: list) -> tuple:
    """(drafts, accepted) of run.c's loop for the greedy continuation ids[n_prompt:]: the first token comes
    from the prompt; then each step drafts ids[pos+1] with MTP row pos-1 (hidden state of pos-1, token pos)
    and moves on by 2 tokens if the draft was right, else by 1, until the continuation is printed."""
    n, drafts, kept = n_prompt + 1, 0, 0
    while n < len(ids):
        pos = n - 1
        drafts += 1
        if mtp_argmax[pos - 1] == ids[pos + 1]:
            kept, n = kept + 1, n + 2
        else:
            n += 1
    return drafts, kept


@pytest.mark.parametrize("i", [0, 1])
def test_greedy_acceptance_matches_the_fixture(run_bin, mtp_bin, i):
    """The MTP rows run.c drafts with during generation (its own latent cache filled over the prompt,
    then only from chosen tokens, 1 or 2 rows a step) are the teacher-forced ones: the count of accepted
    drafts equals what the fixture's MTP argmaxes predict. A stale or missing MTP cache row changes it
    while the greedy text stays right."""
    fx, _ = mtp_fixture()
    s = fx["sequences"][i]
    case = [c for c in json.load(open(GREEDY)) if s["ids"][:len(c["prompt_ids"])] == c["prompt_ids"]][0]
    n_prompt = len(case["prompt_ids"])
    assert min(s["mtp_margin"]) > 1e-3, "a near-tie in the fixture's drafts: pick another sequence"
    p = ok(run(run_bin, mtp_bin, "--tokens", ",".join(map(str, case["prompt_ids"])), "-n", len(s["ids"]) - n_prompt,
               "-t", "0", "--print-ids", "--mtp"))
    assert [int(t) for t in p.stdout.split()] == s["ids"][n_prompt:]
    drafts, kept = expected_acceptance(s["ids"], n_prompt, s["mtp_argmax"])
    assert f"mtp: {kept} of {drafts} drafts accepted".encode() in p.stderr, (drafts, kept, p.stderr.decode())


# ---------------------------------------------------------------- speculative decoding, sampling

def speculate(hooks, p_logits, q_logits, temp=1.0, top_p=1.0, min_p=0.0, top_k=0, draws=200000, seed=1):
    case = f"{len(p_logits)} {temp} {top_p} {min_p} {top_k} {draws} {seed}\n" + \
        " ".join(map(str, p_logits)) + "\n" + " ".join(map(str, q_logits)) + "\n"
    r = subprocess.run([hooks, "speculate"], input=case.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    counts, kept = r.stdout.decode().splitlines()
    return np.array([int(x) for x in counts.split()]), int(kept)


P_LOGITS = [3.0, 2.5, 1.0, 0.0, -1.0, 2.9, -3.0, 0.5]
Q_LOGITS = [-1.0, 0.0, 2.0, 3.0, 1.0, 0.0, 2.5, -2.0]  # a poor draft: mostly where p is small


@pytest.mark.parametrize("kw", [dict(), dict(temp=0.7), dict(top_k=4), dict(top_p=0.8, min_p=0.1), dict(temp=0.0)],
                         ids=["plain", "temp", "top_k", "top_p_min_p", "greedy"])
def test_speculative_sampling_keeps_the_target_distribution(hooks, kw):
    """Drafts from q, accepted by min(1, p/q), else drawn from max(0, p - q): the tokens follow p (200,000
    draws, 5 sigma per id), and the draft is kept at the rate sum_i min(p_i, q_i). top-k / top-p give p
    and q different supports; at temperature 0 both are one-hot (greedy equality)."""
    counts, kept = speculate(hooks, P_LOGITS, Q_LOGITS, **kw)
    ek = {k: v for k, v in kw.items() if k != "temp"}
    p = expected(P_LOGITS, temp=kw.get("temp", 1.0), **ek) if kw.get("temp", 1.0) > 0 else \
        np.eye(len(P_LOGITS))[int(np.argmax(P_LOGITS))]
    q = expected(Q_LOGITS, temp=kw.get("temp", 1.0), **ek) if kw.get("temp", 1.0) > 0 else \
        np.eye(len(Q_LOGITS))[int(np.argmax(Q_LOGITS))]
    assert_distribution(counts, p)
    n, rate = counts.sum(), np.minimum(p, q).sum()
    assert abs(kept - n * rate) <= 5 * math.sqrt(n * rate * (1 - rate)) + 1, (kept, n * rate)
    assert kept < n  # the draft really was rejected at times: the residual path ran


def chi2_pvalue(x: float, df: int) -> float:
    """Upper tail of chi-square by Wilson and Hilferty's cube-root normal approximation."""
    z = ((x / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def two_sample_pvalue(a: list, b: list) -> float:
    """Chi-square test that two equal-sized samples come from one distribution (categories with fewer
    than 10 draws in both samples together are pooled)."""
    keys = set(a) | set(b)
    ca, cb = {k: a.count(k) for k in keys}, {k: b.count(k) for k in keys}
    big = [k for k in keys if ca[k] + cb[k] >= 10]
    cells = [(ca[k], cb[k]) for k in big] + [(sum(ca[k] for k in keys if k not in big),
                                               sum(cb[k] for k in keys if k not in big))]
    cells = [c for c in cells if sum(c) > 0]
    x = sum((u - v) ** 2 / (u + v) for u, v in cells)
    return chi2_pvalue(x, len(cells) - 1) if len(cells) > 1 else 1.0


def test_sampled_tokens_have_the_same_distribution_with_mtp(run_bin, mtp_bin):
    """Temperature 0.8, top-k 10, 1,000 fixed seeds each: the 2nd and 3rd sampled tokens (the first to go
    through the acceptance rule; the 1st comes from the prompt alone) are distributed alike with and
    without --mtp (two-sample chi-square, p > 0.001 for each). Drafts here are often rejected (the MTP
    head is weaker than the model), so both the accept and the residual path are exercised."""
    def sample(seed, mtp):
        p = ok(run(run_bin, mtp_bin, "-i", "ROMEO:", "-n", "3", "-t", "0.8", "-k", "10", "-s", seed, "--print-ids",
                   "--threads", "1", *(["--mtp"] if mtp else [])))
        return [int(t) for t in p.stdout.split()]
    with ThreadPoolExecutor(2) as pool:
        plain = list(pool.map(lambda s: sample(s, False), range(1, 1001)))
        mtp = list(pool.map(lambda s: sample(s, True), range(1, 1001)))
    assert plain != mtp  # not the same random stream: the test compares distributions
    for k in (1, 2):
        pv = two_sample_pvalue([o[k] for o in plain], [o[k] for o in mtp])
        assert pv > 1e-3, f"token {k + 1}: p = {pv:.2g}"


@pytest.mark.parametrize("n,ctx", [(1, 64), (2, 64), (7, 64), (60, 5), (60, 9)])
def test_mtp_stops_where_plain_generation_stops(run_bin, mtp_bin, n, ctx):
    """-n ends generation mid-way through a kept draft's pair of tokens; at the end of the context the step
    falls back to one token (a pair would not fit) and stops with the same message."""
    args = [mtp_bin, "-i", "ROMEO:", "-n", n, "-c", ctx, "-t", "0", "--print-ids"]
    plain, mtp = ok(run(run_bin, *args)), ok(run(run_bin, *args, "--mtp"))
    assert mtp.stdout == plain.stdout and len(plain.stdout.split()) == min(n, ctx - 3 + 1)
    assert (b"context limit" in mtp.stderr) == (b"context limit" in plain.stderr)


@pytest.mark.parametrize("extra", [["-m", "chat"], ["--ppl", SHIPPED], ["--bench"], ["-i", "x", "--trace", "/dev/null"]])
def test_mtp_with_chat_ppl_bench_or_trace_is_one_error(run_bin, mtp_bin, extra):
    one_error(run(run_bin, mtp_bin, "--mtp", *extra), "--mtp goes with generation")


@pytest.mark.parametrize("variant", ["v3fp8", "glm"])
def test_mtp_of_generated_checkpoints_against_numpy(variant, run_bin, checkpoint, tmp_path):
    """tests/gen_checkpoints.py's FP8 V3 (3 shards) and GLM-4.7-Flash-style checkpoints carry an MTP layer
    whose embedding and head copies equal the main model's. Exported with --mtp (f32), run.c's MTP rows
    equal the numpy MTP forward pass (test_shakespeare.numpy_mtp_logits, on tests/reference.py's blocks)
    within 3x the engine tests' tolerance (measured 1.1e-4 on v3fp8, whose main logits are within 2.2e-5: an MTP
    row adds a block on top of the main model's last hidden state, in chaotic random weights); greedy generation with --mtp equals it without (random weights:
    the drafts are nearly always rejected, so this runs the rejection path step after step)."""
    from test_engine import TOL, prompt_ids, n_tokens_of
    from test_shakespeare import numpy_mtp_logits
    hf = checkpoint(variant)
    out = tmp_path / "m.bin"
    p = export(out, "--mtp", ckpt=hf)
    assert p.returncode == 0, p.stderr
    ids = prompt_ids(n_tokens_of(str(out)), 24)
    ok(run(run_bin, out, "--mtp", "--tokens", ",".join(map(str, ids)), "--dump-logits", tmp_path / "l", "-ub", 5))
    want = numpy_mtp_logits(ids, hf)[1]
    got = np.fromfile(tmp_path / "l", "<f4").reshape(want.shape)
    assert np.abs(got - want).max() <= 3 * TOL, f"max |run.c - numpy| = {np.abs(got - want).max():.3g}"
    args = [out, "--tokens", ",".join(map(str, ids[:5])), "-n", "40", "-t", "0", "--print-ids"]
    assert ok(run(run_bin, *args, "--mtp")).stdout == ok(run(run_bin, *args)).stdout
