"""`run model.bin --ppl file.txt` against the independent numpy reference (tests/reference.py).

The v3 random checkpoint ships a tokenizer (embedded by export.py). For a UTF-8 text, the ids come
from the engine's own tokenizer (`--encode`, exact against HF `tokenizers` in test_tokenizer.py).
The expected figures are computed here, the way train.py measures validation loss: the ids (no BOS)
are cut into consecutive windows of context-1 tokens, each fed after BOS from position 0, and every
text token is scored with -log softmax over all vocab_size logits (padding rows included, as PyTorch's
cross_entropy does). With a tokenizer that adds no BOS, the token before a window stands in for BOS
and the first token of the text is not scored. Characters are Unicode code points (Python's len).

Rules:
- nll_per_token, nll_per_char, bits_per_char and ppl within 1e-4 relative of the reference, for one
  window (default context) and for many short windows (-c); token and character counts exact.
- expert_load counts equal, per MoE layer, the number of times the reference router chose each
  expert over every fed position (BOS included, the last token of a window is never fed).
- without -c, the window is YaRN's original_max_position_embeddings (train.py's training context).
- the `ppl ...` line is the last line of stdout.
- bad input (missing file, ill-formed UTF-8, empty file, -c 1, no tokenizer, --ppl with -i) is one
  error line on stderr and a non-zero exit.

To see it fail: SEEK_RUN=/path/to/broken/run pytest tests/test_ppl.py (see conftest.py).
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import reference as R

REL = 1e-4
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.  Ünïcödé — ✓ 12345 façade\tend\n")


def run(run_bin: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([run_bin, *args], capture_output=True, text=True, timeout=timeout)


def run_ppl(run_bin: str, model: str, path: str, *opts) -> tuple[dict, dict, str]:
    """-> (fields of the last line, {layer: counts}, stderr) of `run model --ppl path`."""
    r = run(run_bin, model, "--ppl", path, *opts)
    assert r.returncode == 0, f"--ppl {path} {opts}: rc {r.returncode}\n{r.stderr[-2000:]}"
    lines = r.stdout.strip().splitlines()
    m = re.fullmatch(r"ppl tokens=(\d+) chars=(\d+) nll_per_token=(\S+) nll_per_char=(\S+) "
                     r"bits_per_char=(\S+) ppl=(\S+)", lines[-1])
    assert m, f"last line is not the ppl line: {lines[-1]!r}"
    keys = ["tokens", "chars", "nll_per_token", "nll_per_char", "bits_per_char", "ppl"]
    fields = {k: (int(v) if k in ("tokens", "chars") else float(v)) for k, v in zip(keys, m.groups())}
    load = {}
    for line in lines[:-1]:
        e = re.fullmatch(r"expert_load layer=(\d+) used=(\d+)/(\d+) max_share=(\S+) min_share=(\S+) "
                         r"max_min=(\S+) counts=([\d,]+)", line)
        assert e, f"unexpected stdout line {line!r}"
        counts = np.array([int(x) for x in e.group(7).split(",")])
        assert len(counts) == int(e.group(3)) and int(e.group(2)) == int((counts > 0).sum())
        share = counts / counts.sum()
        assert abs(float(e.group(4)) - share.max()) <= 1e-4 and abs(float(e.group(5)) - share.min()) <= 1e-4
        if counts.min() > 0:
            assert float(e.group(6)) == pytest.approx(counts.max() / counts.min(), rel=1e-3)
        else:
            assert e.group(6) == "inf"
        load[int(e.group(1))] = counts
    return fields, load, r.stderr


def encode(run_bin: str, model: str, text: str) -> list:
    r = subprocess.run([run_bin, model, "--encode"], input=text.encode(), capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [int(x) for x in r.stdout.split()]


def expected(hf_dir: str, ids: list, context: int, bos) -> tuple[float, int, dict]:
    """(total NLL, tokens scored, {layer: expert counts}) from the numpy reference."""
    cfg = json.load(open(os.path.join(hf_dir, "config.json")))
    first, window = (0, context - 1) if bos is not None else (1, context - 1)
    nll, n, routing = 0.0, 0, []
    for a in range(first, len(ids), window):
        targets = ids[a:a + window]
        fed = [bos if bos is not None else ids[a - 1]] + targets[:-1]
        logits = R.reference_logits(hf_dir, fed, routing=routing)   # (len(fed), V)
        mx = logits.max(axis=1)
        lse = mx + np.log(np.exp(logits - mx[:, None]).sum(axis=1))
        nll += float((lse - logits[np.arange(len(targets)), targets]).sum())
        n += len(targets)
    E = cfg["n_routed_experts"]
    counts = {}
    for layer, _, experts, _ in routing:
        c = counts.setdefault(layer, np.zeros(E, dtype=np.int64))
        c[list(experts)] += 1
    return nll, n, counts


def check(got: dict, nll: float, n: int, chars: int) -> None:
    assert got["tokens"] == n and got["chars"] == chars
    want = {"nll_per_token": nll / n, "nll_per_char": nll / chars,
            "bits_per_char": nll / chars / math.log(2), "ppl": math.exp(nll / n)}
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=REL), f"{k}: run.c {got[k]}, reference {v}"


@pytest.fixture(scope="module")
def text_file(workdir) -> str:
    path = os.path.join(workdir, "ppl.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write(TEXT)
    return path


@pytest.mark.parametrize("context", [None, 2, 9])
def test_ppl_matches_reference(context, run_bin, exported, checkpoint, text_file):
    """One window (the default context, YaRN's original 4096), windows of 1 and of 8 text tokens
    (each after BOS, so 2 and 9 positions)."""
    model, hf = exported("v3", "f32"), checkpoint("v3")
    opts = ["-c", str(context)] if context else []
    got, load, err = run_ppl(run_bin, model, text_file, *opts)
    # the default window is YaRN's original context (4096 here), not max_position_embeddings
    assert f"windows of up to {context or 4096} tokens" in err, err
    ids = encode(run_bin, model, TEXT)
    assert len(ids) > 20
    nll, n, counts = expected(hf, ids, context or 4096, bos=0)
    check(got, nll, n, len(TEXT))
    assert sorted(load) == sorted(counts) == [2, 3]
    for layer in counts:
        assert np.array_equal(load[layer], counts[layer]), f"layer {layer}: {load[layer]} vs {counts[layer]}"


def derived_model(checkpoint, workdir: str, name: str, edit: dict) -> tuple[str, str]:
    """A copy of the v3 checkpoint with {file: {key: value}} edits to its JSON files, exported (f32)."""
    hf = os.path.join(workdir, "hf", name)
    if not os.path.exists(hf):
        shutil.copytree(checkpoint("v3"), hf)
        for fname, changes in edit.items():
            path = os.path.join(hf, fname)
            d = json.load(open(path))
            for k, v in changes.items():
                if isinstance(v, dict):
                    d[k].update(v)
                else:
                    d[k] = v
            json.dump(d, open(path, "w"))
    model = os.path.join(workdir, name + ".bin")
    exporter = os.environ.get("SEEK_EXPORT") or os.path.join(os.path.dirname(R.__file__), "..", "export.py")
    r = subprocess.run([sys.executable, exporter, hf, model, "--dtype", "f32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return hf, model


def test_ppl_without_bos(run_bin, checkpoint, workdir, text_file):
    """A tokenizer without add_bos_token: the previous token starts each window; the first is unscored."""
    hf, model = derived_model(checkpoint, workdir, "v3-nobos", {"tokenizer_config.json": {"add_bos_token": False}})
    got, load, _ = run_ppl(run_bin, model, text_file, "-c", "6")
    ids = encode(run_bin, model, TEXT)
    nll, n, counts = expected(hf, ids, 6, bos=None)
    assert n == len(ids) - 1
    check(got, nll, n, len(TEXT))
    for layer in counts:
        assert np.array_equal(load[layer], counts[layer])


def test_ppl_default_context_is_yarn_original(run_bin, checkpoint, workdir, text_file):
    """original_max_position_embeddings 32 (max_position_embeddings stays 163840): windows of 31 tokens
    after BOS without -c, as train.py validates at its training context."""
    hf, model = derived_model(checkpoint, workdir, "v3-ctx32",
                              {"config.json": {"rope_scaling": {"original_max_position_embeddings": 32}}})
    got, load, err = run_ppl(run_bin, model, text_file)
    assert "windows of up to 32 tokens" in err, err
    ids = encode(run_bin, model, TEXT)
    assert len(ids) > 2 * 31
    nll, n, counts = expected(hf, ids, 32, bos=0)
    check(got, nll, n, len(TEXT))
    for layer in counts:
        assert np.array_equal(load[layer], counts[layer])


def write(workdir: str, name: str, data: bytes) -> str:
    path = os.path.join(workdir, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize("case", ["missing", "bad_utf8", "truncated_utf8", "empty", "context_1",
                                  "with_prompt", "no_tokenizer"])
def test_ppl_rejects_bad_input(case, run_bin, exported, workdir, text_file):
    model = exported("v3", "f32")
    args = {
        "missing": [model, "--ppl", os.path.join(workdir, "no-such.txt")],
        "bad_utf8": [model, "--ppl", write(workdir, "bad.txt", b"good text \xff\xfe more")],
        "truncated_utf8": [model, "--ppl", write(workdir, "trunc.txt", "abc é".encode()[:-1])],
        "empty": [model, "--ppl", write(workdir, "empty.txt", b"")],
        "context_1": [model, "--ppl", text_file, "-c", "1"],
        "with_prompt": [model, "--ppl", text_file, "-i", "hello"],
        "no_tokenizer": [exported("v2", "f32"), "--ppl", text_file],
    }[case]
    r = run(run_bin, *args, timeout=60)
    assert r.returncode > 0, f"{case}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: {lines}"
    assert "ppl tokens=" not in r.stdout
