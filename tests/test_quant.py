"""Q8/Q4 weights (export.py --dtype q8|q4, run.c's integer kernels), threads and batched prefill.

Rules:
- Export: the file's quantized blocks, decoded here independently of export.py (bf16 scale, then
  32 int8 or 32 nibbles - 8 per block, the last block of a row zero-padded with 0), are the
  checkpoint's weights to within one quantization step of their block (+4%: bf16 scale), nearly all (> 97%) to within
  half a step (round to nearest; only clamped extremes lose more); the router and 1-D tensors stay F32.
- Engine, exact: for single-token prompts, run.c's logits equal (within 1e-4) an independent numpy
  forward pass (tests/reference.py) on the decoded weights, with every activation that meets a
  quantized matrix quantized the way the format's kernels specify (per block of 32: d = max|x| / 127
  in fp32, q = round half away from zero of x / d). Only fp32-vs-fp64 rounding separates the two,
  except when it moves an activation across a rounding boundary (x / d within ~1e-6 of k + 1/2: it
  happens, e.g. v3 q8 at token 0); these tiny random models amplify one flipped step into logit
  changes of 0.1-1 through their routers. So 75% of 12 tokens must match; a wrong kernel matches none.
- Engine vs f32 (relative rms error of all logits of a 40-token prompt): q8 below 0.3, q4 below 1.0,
  q8 under half of q4. Loose on purpose: these random models are chaotic (q8 weights alone move the
  reference's logits by 0.1-0.2 relative, q4 by 0.6-0.8); real accuracy is measured on the trained
  Shakespeare model (README). A scrambled kernel gives ~1.4.
- Batched prefill (chunks of 64, MoE tokens grouped per expert) gives the same logits as feeding
  tokens one at a time (-ub 1) and as odd chunks (-ub 7), to fp32 rounding; so do 1 and 3
  threads. Over 150 positions (three blocks of the blocked attention), with f32 and bf16 caches, all
  of these and the default thread choice give bit-identical logits.
- The blocks are exactly the format's rule applied to the checkpoint's weights (as version 1 stored them,
  row after row); only their order in the file changed (16 interleaved rows).
- Every kernel path (AVX-512 VNNI, AVX2, portable; those this CPU runs) gives bit-identical logits: each
  block's product is an exact int32 sum, scaled and added in the same order everywhere.
- run.c rejects a Q8 tensor whose byte count does not match its block layout, a quantized norm, and a
  version 1 file's Q8 layout (with one line), but reads version 1 files of F32 weights as before.
- The shipped Shakespeare checkpoint exported as q8/q4: NLL within 0.5% / 3% of f32 and top-1
  agreement with f32 of at least 95% / 80% on the held-out snippet in tests/data.
"""
import os
import struct
import subprocess

import numpy as np
import pytest

import gen_checkpoints as G
import reference as R
from test_engine import prompt_ids, read_model_file, top2_margin, n_tokens_of, corrupt, entry_offset, set_u32, set_u64

VARIANTS = sorted(G.VARIANTS)
QK = 32
GROUP = 16  # rows interleaved in a Q8/Q4 matrix
EXACT_TOL = 1e-4
N_SINGLE = 12
Q8_REL, Q4_REL = 0.3, 1.0


# ---------------------------------------------------------------- the format, decoded independently

def decode_blocks(raw: bytes, typ: str, rows: int, cols: int) -> tuple:
    """-> (values (rows, cols) float64, scales (rows, nb), ints (rows, nb, 32)). Rows come in groups
    of 16 (the last padded with zero rows): the group's scales, 16 per block, then per block the
    rows' q bytes in 4-byte pieces, piece j of row k at 64 j + 4 k."""
    nb, qb = -(-cols // QK), (QK if typ == "Q8" else QK // 2)
    groups = -(-rows // GROUP)
    assert len(raw) == groups * GROUP * nb * (2 + qb)
    a = np.frombuffer(raw, np.uint8).reshape(groups, GROUP * nb * (2 + qb)).astype(np.uint32)
    s = a[:, :2 * GROUP * nb].reshape(groups, nb, GROUP, 2).transpose(0, 2, 1, 3).reshape(groups * GROUP, nb, 2)
    p = a[:, 2 * GROUP * nb:].reshape(groups, nb, qb // 4, GROUP, 4).transpose(0, 3, 1, 2, 4)
    p = p.reshape(groups * GROUP, nb, qb)
    assert not s[rows:].any() and not p[rows:].any(), "padding rows must be zero"
    s, p = s[:rows], p[:rows]
    d = ((s[..., 0] | (s[..., 1] << 8)) << 16).astype(np.uint32).view(np.float32)
    if typ == "Q8":
        q = p.astype(np.uint8).view(np.int8).astype(np.int64)
    else:
        q = np.concatenate([p & 15, p >> 4], axis=2).astype(np.int64) - 8
    vals = (q * d[..., None].astype(np.float64)).reshape(rows, nb * QK)
    return vals[:, :cols], d.astype(np.float64), q


def decoded_weights(path: str) -> dict:
    m = read_model_file(path)
    out = {}
    for t in m["tensors"]:
        if t["type"] in ("Q8", "Q4"):
            raw = m["buf"][t["offset"]:t["offset"] + t["nbytes"]]
            out[t["name"]] = (t["type"],) + decode_blocks(raw, t["type"], t["rows"], t["cols"])
    return out


def quantize_activation(x: np.ndarray) -> np.ndarray:
    """run.c's activation rule, in float32: per block of 32, d = max|x| / 127, q = roundf(x / d)."""
    x = np.asarray(x, np.float32)
    n = x.shape[-1]
    nb = -(-n // QK)
    g = np.zeros(x.shape[:-1] + (nb * QK,), np.float32)
    g[..., :n] = x
    g = g.reshape(x.shape[:-1] + (nb, QK))
    d = np.abs(g).max(-1, keepdims=True) / np.float32(127)
    inv = np.where(d > 0, np.float32(1) / np.where(d > 0, d, np.float32(1)), np.float32(0)).astype(np.float32)
    v = g * inv
    q = np.trunc(v + np.copysign(np.float32(0.5), v))
    return (q * d).reshape(x.shape[:-1] + (nb * QK,))[..., :n].astype(np.float64)


class _QuantizedRight:
    """W.T for a quantized W: `x @ W.T` quantizes x first, like run.c's matmul."""
    __array_ufunc__ = None

    def __init__(self, w: np.ndarray):
        self.w = w

    def __rmatmul__(self, x):
        return quantize_activation(x) @ self.w.T


class QuantizedMatrix(np.ndarray):
    @property
    def T(self):
        return _QuantizedRight(np.asarray(self))


class EmulatingReference(R.Reference):
    """The reference on decoded Q8/Q4 weights, quantizing what run.c quantizes: the input of every
    quantized matrix, and in absorbed attention the latent u before W_UV (W_UK is folded into the
    query in fp32, unquantized)."""

    def __init__(self, hf_dir: str, path: str):
        super().__init__(hf_dir)
        for name, (_, vals, _, _) in decoded_weights(path).items():
            self.w[name] = vals.view(QuantizedMatrix)
        self.quantized = set(decoded_weights(path))

    def attention(self, l, x, pos, absorbed=False, yarn_mscale=True, bf16_cache=False, keep=None):
        name = f"model.layers.{l}.self_attn.kv_b_proj.weight"
        if name not in self.quantized:
            return super().attention(l, x, pos, absorbed, yarn_mscale, bf16_cache, keep=keep)
        einsum = np.einsum

        def quantizing_einsum(spec, *ops, **kw):
            if spec == "hvr,thr->thv":  # W_UV u: u is quantized per head
                return einsum(spec, ops[0], quantize_activation(ops[1]), **kw)
            return einsum(spec, *ops, **kw)
        R.np.einsum = quantizing_einsum
        try:
            return super().attention(l, x, pos, True, yarn_mscale, bf16_cache, keep=keep)
        finally:
            R.np.einsum = einsum


_REFS = {}


def emulating(hf: str, path: str) -> EmulatingReference:
    if path not in _REFS:
        _REFS[path] = EmulatingReference(hf, path)
    return _REFS[path]


# ---------------------------------------------------------------- export

@pytest.mark.parametrize("dtype", ["q8", "q4"])
@pytest.mark.parametrize("variant", ["v2", "v3fp8", "k2rp"])
def test_export_blocks(variant, dtype, exported, checkpoint):
    path = exported(variant, dtype)
    ref = R.load(checkpoint(variant))
    m = read_model_file(path)
    types = {t["name"]: t["type"] for t in m["tensors"]}
    decoded = decoded_weights(path)
    for name, w in ref.w.items():
        if w.ndim == 1 or name.endswith("mlp.gate.weight"):
            assert types[name] == "F32", name
            continue
        typ, vals, d, q = decoded[name]
        assert typ == dtype.upper(), name
        rows, cols = w.shape
        step = np.repeat(np.abs(d), QK, axis=1)[:, :cols]
        # round to nearest: half a step; the clamp at 127 (q8) or at +7 (q4, whose scale puts the
        # largest magnitude at -8) may cost a step, and a bit more as the scale is rounded to bf16
        assert np.all(np.abs(vals - w) <= step * 1.04 + 1e-30), name
        assert np.mean(np.abs(vals - w) <= 0.5 * step * 1.0001 + 1e-30) > 0.97, name
        if cols % QK:
            assert np.all(q[:, -1, cols % QK:] == 0), f"{name}: padding must decode to 0"
        rel = np.sqrt(np.mean((vals - w) ** 2) / np.mean(w ** 2))
        assert rel < (0.01 if dtype == "q8" else 0.15), f"{name}: relative rms error {rel:.3g}"


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> float32 rounded to bf16, nearest even (finite values)."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    return (((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)


def format_rule(w: np.ndarray, typ: str) -> tuple:
    """The format's quantization of float32 rows: (scales (rows, nb), ints (rows, nb, 32)); Q8:
    d = bf16(max|x| / 127), q = round(x / d) in -127..127; Q4: d = bf16(m / -8) for the value m of
    largest magnitude, q = round(x / d) in -8..7. (The values are divided by the rounded scale.)"""
    rows, cols = w.shape
    g = np.zeros((rows, -(-cols // QK) * QK), np.float32)
    g[:, :cols] = w
    g = g.reshape(rows, -1, QK)
    if typ == "Q8":
        d = bf16_round(np.abs(g).max(2) / np.float32(127))
    else:
        d = bf16_round(np.take_along_axis(g, np.abs(g).argmax(2)[..., None], 2)[..., 0] / np.float32(-8))
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    lo, hi = (-127, 127) if typ == "Q8" else (-8, 7)
    return d, np.clip(np.rint(g * inv[..., None]), lo, hi).astype(np.int64)


@pytest.mark.parametrize("dtype", ["q8", "q4"])
@pytest.mark.parametrize("variant", ["v2lite", "v2", "k2rp"])
def test_export_blocks_exact(variant, dtype, exported, checkpoint):
    """Bit for bit the blocks version 1 wrote (F32, BF16 and F16 checkpoints: their weights are exact
    in float32): repacking moved them, it changed no scale and no integer."""
    decoded = decoded_weights(exported(variant, dtype))
    for name, w in R.load(checkpoint(variant)).w.items():
        if name in decoded:
            _, _, d, q = decoded[name]
            want_d, want_q = format_rule(w.astype(np.float32), dtype.upper())
            np.testing.assert_array_equal(d, want_d, err_msg=name)
            np.testing.assert_array_equal(q, want_q, err_msg=name)


# ---------------------------------------------------------------- engine

@pytest.fixture(scope="module")
def quant_logits(run_bin, exported, workdir):
    made = {}

    def get(variant: str, dtype: str, chunk: int = None, threads: int = None):
        key = (variant, dtype, chunk, threads)
        if key not in made:
            model = exported(variant, dtype)
            toks = prompt_ids(n_tokens_of(model))
            out = os.path.join(workdir, f"q-{variant}-{dtype}-{len(made)}.logits")
            cmd = [run_bin, model, "--tokens", ",".join(map(str, toks)), "--dump-logits", out]
            if threads:
                cmd += ["--threads", str(threads)]
            if chunk:
                cmd += ["-ub", str(chunk)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr
            V = read_model_file(model)["ints"][2]
            made[key] = toks, np.fromfile(out, "<f4").reshape(len(toks), V).astype(np.float64)
        return made[key]
    return get


@pytest.mark.parametrize("dtype", ["q8", "q4"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_quant_logits_match_emulating_reference(variant, dtype, run_bin, exported, checkpoint, workdir):
    path = exported(variant, dtype)
    ref = emulating(checkpoint(variant), path)
    ids = prompt_ids(n_tokens_of(path), n=N_SINGLE, seed=11)
    exact = []
    for i in ids:
        out = os.path.join(workdir, f"single-{variant}-{dtype}.f32")
        r = subprocess.run([run_bin, path, "--tokens", str(i), "--dump-logits", out], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        got = np.fromfile(out, "<f4").astype(np.float64)
        exact.append(np.abs(got - ref.forward([i])[0]).max() <= EXACT_TOL)
    assert np.mean(exact) >= 0.75, f"{variant} {dtype}: {sum(exact)} of {len(exact)} single tokens match"


@pytest.mark.parametrize("variant", VARIANTS)
def test_quant_error_vs_f32(variant, quant_logits, checkpoint):
    toks = quant_logits(variant, "q8")[0]
    f32 = R.reference_logits(checkpoint(variant), toks)
    rel = {}
    for dtype in ("q8", "q4"):
        got = quant_logits(variant, dtype)[1]
        rel[dtype] = np.sqrt(np.mean((got - f32) ** 2) / np.mean(f32 ** 2))
    if G.VARIANTS[variant].get("index_topk"):
        # DeepSeek Sparse Attention (V3.2, index_topk 8 of 40 positions): quantization moves the indexer's
        # scores, and every selection it flips changes the attention outright (measured: q8 0.31-0.37,
        # q4 0.75-0.82); a scrambled kernel still gives ~1.4.
        assert rel["q8"] < rel["q4"] and rel["q8"] < 0.5 and rel["q4"] < Q4_REL, rel
        return
    assert rel["q8"] < rel["q4"] / 2 and rel["q8"] < Q8_REL and rel["q4"] < Q4_REL, rel


@pytest.mark.parametrize("dtype", ["f32", "q8", "q4"])
@pytest.mark.parametrize("variant", ["v2", "v3", "k2rp"])
def test_batched_prefill_equals_token_by_token(variant, dtype, quant_logits):
    _, batched = quant_logits(variant, dtype)
    _, single = quant_logits(variant, dtype, chunk=1)
    _, odd = quant_logits(variant, dtype, chunk=7)
    assert np.abs(batched - single).max() <= 1e-5
    assert np.abs(odd - single).max() <= 1e-5


@pytest.mark.parametrize("dtype", ["f32", "q4"])
def test_threads_agree(dtype, quant_logits):
    _, one = quant_logits("v3", dtype, threads=1)
    _, three = quant_logits("v3", dtype, threads=3)
    assert np.abs(one - three).max() <= 1e-5


@pytest.mark.parametrize("dtype,cache", [("f32", "f32"), ("q8", "f32"), ("q4", "bf16")])
def test_blocked_attention_bit_identical(dtype, cache, run_bin, exported, workdir):
    """150 positions span three blocks of run.c's blocked attention (ATTN_BLOCK = 64). A token's
    blocks are spread over the threads and their summaries folded afterwards, in block order; prefill
    takes up to 32 / n_heads tokens over each block at once (this variant: 8), each seeing only the
    rows up to its own position. So chunks of 64 and of 7, token-by-token decoding, 1 and 3 threads
    (--threads forces every product onto them) and the default thread choice by work size give
    bit-identical logits."""
    model = exported("v3", dtype)
    toks = np.random.default_rng(3).integers(0, n_tokens_of(model), 150).tolist()
    V = read_model_file(model)["ints"][2]
    ways = {"chunks of 64": [], "chunks of 7": ["-ub", "7"], "decoding": ["-ub", "1"],
            "decoding, 3 threads": ["-ub", "1", "--threads", "3"], "1 thread": ["--threads", "1"],
            "3 threads": ["--threads", "3"]}
    got = {}
    for name, opts in ways.items():
        out = os.path.join(workdir, f"blocked-{dtype}-{cache}.f32")
        cmd = [run_bin, model, "--tokens", ",".join(map(str, toks)), "--dump-logits", out, "--cache-type", cache] + opts
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        got[name] = np.fromfile(out, "<f4").reshape(len(toks), V)
    for name, x in got.items():
        diff = np.abs(x - got["chunks of 64"]).max(axis=1)
        assert np.array_equal(x, got["chunks of 64"]), \
            f"{name} differs from chunks of 64 (first at position {int(np.argmax(diff > 0))}, max {diff.max():.3g})"


# Kernel paths and the flags that select them (run.c's #if), with the CPU flags each needs.
KERNEL_PATHS = {
    "portable": ([], []),
    "avx2": (["-mavx2", "-mfma"], ["avx2", "fma"]),
    "avx2-vnni": (["-mavx2", "-mfma", "-mavxvnni"], ["avx2", "fma", "avx_vnni"]),
    "avx512-vnni": (["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"],
                    ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"]),
}


@pytest.fixture(scope="module")
def kernel_builds(workdir):
    """run.c built once per kernel path this CPU can run (x86 Linux: from /proc/cpuinfo; else portable)."""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        cpu = set()
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "run.c")
    builds = {}
    for name, (flags, needs) in KERNEL_PATHS.items():
        if not set(needs) <= cpu:
            continue
        out = os.path.join(workdir, f"run-{name}")
        cmd = [os.environ.get("CC", "cc"), "-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", *flags, "-o", out, src,
               "-lm", "-lpthread"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        builds[name] = out
    return builds


@pytest.mark.parametrize("dtype", ["q8", "q4"])
@pytest.mark.parametrize("variant", ["v2", "k2rp", "v2lite"])
def test_kernel_paths_agree_bitwise(variant, dtype, kernel_builds, run_bin, exported, workdir):
    """The batched prefill of a 100-token prompt, and the same tokens decoded one at a time (-ub 1: the
    W_UK fold then reads the quantized bytes itself), every path against ./run (whatever path it has):
    equal bits. v2's heads (dn 16, dv 24) start mid-panel, k2rp's rows (vocab 333) end mid-panel; v2lite's
    16 heads and rank 72 fill the attention tiles and cut them, over two blocks of positions."""
    path = exported(variant, dtype)
    toks = ",".join(map(str, prompt_ids(n_tokens_of(path), 100)))
    got = {}
    for name, binary in {"run": run_bin, **kernel_builds}.items():
        for opts in ([], ["-ub", "1"]):
            out = os.path.join(workdir, f"paths-{variant}-{dtype}-{name}.f32")
            r = subprocess.run([binary, path, "--tokens", toks, "--dump-logits", out] + opts, capture_output=True,
                               text=True)
            assert r.returncode == 0, r.stderr
            got[name + " " + " ".join(opts)] = open(out, "rb").read()
    assert len(got) >= 4 and len(set(got.values())) == 1, {k: hash(v) for k, v in got.items()}


def as_version1(src: str, dst: str) -> str:
    """The model file in version 1's form: 40 config words, Q8/Q4 (types 2, 3) row after row."""
    m = read_model_file(src)
    head = b"SEEK" + struct.pack("<II", 1, 40) + m["buf"][12:12 + 38 * 4] + bytes(8)
    tensors, pos = [], 12 + 160 + 4 + 128 * len(m["tensors"])
    for t in m["tensors"]:
        data = m["buf"][t["offset"]:t["offset"] + t["nbytes"]]
        typ = {"F32": 0, "BF16": 1, "Q8": 2, "Q4": 3, "U8": 16}[t["type"]]
        if t["type"] in ("Q8", "Q4"):
            _, d, q = decode_blocks(data, t["type"], t["rows"], t["cols"])
            d_bytes = (d.astype(np.float32).view(np.uint32) >> 16).astype("<u2").view(np.uint8)
            q_bytes = (q.astype(np.int8).view(np.uint8) if t["type"] == "Q8"
                       else ((q[..., :QK // 2] + 8) | ((q[..., QK // 2:] + 8) << 4)).astype(np.uint8))
            data = np.concatenate([d_bytes.reshape(*d.shape, 2), q_bytes], axis=2).tobytes()
        pos += -pos % 64
        tensors.append((t, typ, pos, data))
        pos += len(data)
    with open(dst, "wb") as f:
        f.write(head + struct.pack("<I", len(tensors)))
        for t, typ, off, data in tensors:
            f.write(t["name"].encode().ljust(96, b"\0"))
            f.write(struct.pack("<IIIIQQ", typ, t["ndim"], t["rows"], t["cols"], off, len(data)))
        for t, typ, off, data in tensors:
            f.write(bytes(off - f.tell()) + data)
    return dst


def test_version1_files(run_bin, exported, workdir):
    """A version 1 file of F32 weights gives the same logits as its version 2 export; one of version
    1's Q8 layout is refused in one line that says what to do."""
    logits = []
    for path in (exported("v3", "f32"), as_version1(exported("v3", "f32"), os.path.join(workdir, "v1-f32.bin"))):
        out = os.path.join(workdir, "v1.f32")
        r = subprocess.run([run_bin, path, "--tokens", "1,2,3,4,5", "--dump-logits", out], capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
        logits.append(open(out, "rb").read())
    assert logits[0] == logits[1]
    old = as_version1(exported("v3", "q8"), os.path.join(workdir, "v1-q8.bin"))
    r = subprocess.run([run_bin, old, "--tokens", "1,2"], capture_output=True, text=True)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "version 1 Q8" in r.stderr and "export" in r.stderr, r.stderr


# ---------------------------------------------------------------- bad files

@pytest.mark.parametrize("case", ["nbytes_as_int8", "norm_as_q8"])
def test_rejects_bad_quant_tensor(case, run_bin, exported, workdir):
    m = read_model_file(exported("v2", "q8"))
    embed = m["tensors"][0]
    edit = {"nbytes_as_int8": set_u64(entry_offset(0) + 96 + 24, embed["rows"] * embed["cols"]),
            "norm_as_q8": set_u32(entry_offset(1) + 96, 2)}[case]
    bad = corrupt(exported("v2", "q8"), os.path.join(workdir, f"badq-{case}.bin"), edit)
    r = subprocess.run([run_bin, bad, "--tokens", "1,2", "--dump-logits", os.path.join(workdir, "bad.f32")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr


# ---------------------------------------------------------------- the trained model

SHAKESPEARE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "shakespeare")


@pytest.fixture(scope="module")
def shakespeare(workdir):
    """f32/q8/q4 exports of the shipped checkpoint, and the held-out snippet of tests/data."""
    if not os.path.exists(os.path.join(SHAKESPEARE, "config.json")):
        pytest.skip("models/shakespeare (the shipped checkpoint) is not there")
    import json
    import sys
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "shakespeare_val.json")) as f:
        val = json.load(f)
    paths = {}
    for dtype in ("f32", "q8", "q4"):
        paths[dtype] = os.path.join(workdir, f"shakespeare-{dtype}.bin")
        exporter = os.environ.get("SEEK_EXPORT") or os.path.join(os.path.dirname(SHAKESPEARE), "..", "export.py")
        r = subprocess.run([sys.executable, exporter, SHAKESPEARE, paths[dtype], "--dtype", dtype],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    text = os.path.join(workdir, "shakespeare_val.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write(val["text"])
    return paths, text, val["ids"]


def test_shakespeare_quant_accuracy(run_bin, shakespeare, workdir):
    """Trained weights, unlike the random test models, are not chaotic: the issue's bounds (mean NLL
    within 0.5% of f32 for q8, 3% for q4; on the whole held-out tenth of tinyshakespeare.txt we
    measured +0.000% and +0.09%) and top-1 agreement with the f32 logits (measured 98.6% and 87.9%
    over 2000 positions) hold on the test snippet with margin."""
    paths, text, ids = shakespeare
    nll, top1 = {}, {}
    for dtype, path in paths.items():
        r = subprocess.run([run_bin, path, "--ppl", text], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        nll[dtype] = float(r.stdout.split("nll_per_token=")[1].split()[0])
        out = os.path.join(workdir, f"shakespeare-{dtype}.f32")
        r = subprocess.run([run_bin, path, "--tokens", ",".join(map(str, ids)), "--dump-logits", out],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        top1[dtype] = np.fromfile(out, "<f4").reshape(len(ids), -1).argmax(1)
    assert abs(nll["q8"] / nll["f32"] - 1) < 0.005, nll
    assert abs(nll["q4"] / nll["f32"] - 1) < 0.03, nll
    assert np.mean(top1["q8"] == top1["f32"]) >= 0.95
    assert np.mean(top1["q4"] == top1["f32"]) >= 0.80
