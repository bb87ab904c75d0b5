"""export.py + run.c against the independent numpy reference (tests/reference.py), for every
generated checkpoint variant and every position of a 40-token prompt.

Rules:
- f32 export: run.c logits within 1e-4 (max abs) of the reference at every position, and the same
  32-token greedy continuation (ids >= n_tokens masked, as run.c must never sample them).
- bf16 export: the exporter rounds every 2-D weight except the router to bf16 (nearest even), so the
  fair reference is the same forward pass on bf16-rounded weights (for BF16 sources that is the
  checkpoint itself, the export being lossless). run.c's top-1 must equal that reference's top-1 at
  every position, except where the reference's own top-2 margin is below BF16_TIE (1e-3): there
  either of the near-tied ids is accepted. Against the unrounded (f32) reference, top-1 must agree at
  every position t where that reference's top-2 margin exceeds 2 * max_v |ref_bf16[t, v] - ref_f32[t, v]|
  (the logit change the rounding causes there, measured on the reference itself): only such positions
  are decided independently of rounding (and at least half the positions must be).
  Also bf16 logits must be within 1e-3 of that bf16-weight reference (fp32 arithmetic throughout).
- negative controls: the reference with the YaRN mscale^2 softmax factor removed, with the expert
  group limit removed, or with the correction bias ignored, disagrees with run.c by more than 100x
  the tolerance: the comparison is sensitive to those features.
- padding rows (ids >= n_tokens, v3 ships a tokenizer.json smaller than vocab_size) are never
  generated, although their lm_head rows are made to win the unmasked argmax.
- the exported header and tensor table follow format v2 (export.py's header comment), and tensor data equals the
  checkpoint's (dequantised, and for bf16 rounded) weights.
- run.c rejects corrupt model files and bad arguments with one error line and a non-zero exit.
- the bf16 latent cache (--cache-type bf16) against the reference with its latents rounded to bf16
  (see test_bf16_cache_logits for the bound); --bench's output format and options.

To check that a test can fail, point it at a broken copy: SEEK_RUN=/tmp/run-broken pytest tests
(or SEEK_EXPORT=/tmp/export-broken.py); see conftest.py.
"""
import os
import struct
import subprocess

import numpy as np
import pytest

import gen_checkpoints as G
import reference as R

VARIANTS = sorted(G.VARIANTS)
TOL = 1e-4
BF16_TIE = 1e-3
BF16_LOGIT_TOL = 1e-3
N_GEN = 32


def prompt_ids(vocab: int, n: int = 40, seed: int = 7) -> list:
    """n distinct ids spread over the whole vocabulary, including the last row."""
    rng = np.random.default_rng(seed)
    ids = rng.choice(vocab - 1, n - 1, replace=False).tolist()
    ids.insert(n // 2, vocab - 1)
    return [int(i) for i in ids]


# ---------------------------------------------------------------- model file (format v2)

TYPES = {0: "F32", 1: "BF16", 4: "Q8", 5: "Q4", 16: "U8"}


def read_model_file(path: str) -> dict:
    with open(path, "rb") as f:
        buf = f.read()
    assert buf[:4] == b"SEEK", "bad magic"
    version, n_config = struct.unpack_from("<II", buf, 4)
    words = buf[12:12 + 4 * n_config]
    ints = struct.unpack(f"<{n_config}i", words)
    floats = struct.unpack(f"<{n_config}f", words)
    off = 12 + 4 * n_config
    (n_tensors,) = struct.unpack_from("<I", buf, off)
    off += 4
    tensors = []
    for i in range(n_tensors):
        name = buf[off:off + 96].split(b"\0")[0].decode()
        assert buf[off + 95] == 0
        typ, ndim, rows, cols, doff, nbytes = struct.unpack_from("<IIIIQQ", buf, off + 96)
        tensors.append(dict(name=name, type=TYPES.get(typ, typ), ndim=ndim, rows=rows, cols=cols,
                            offset=doff, nbytes=nbytes))
        off += 128
    return dict(version=version, n_config=n_config, ints=ints, floats=floats, tensors=tensors,
                size=len(buf), buf=buf)


def tensor_data(m: dict, t: dict) -> np.ndarray:
    raw = m["buf"][t["offset"]:t["offset"] + t["nbytes"]]
    if t["type"] == "F32":
        x = np.frombuffer(raw, "<f4")
    elif t["type"] == "BF16":
        x = R.bf16_to_f32(np.frombuffer(raw, "<u2"))
    else:
        return np.frombuffer(raw, np.uint8)
    return x.reshape(t["rows"], t["cols"]) if t["ndim"] == 2 else x


def n_tokens_of(path: str) -> int:
    return read_model_file(path)["ints"][35]


def eos_of(path: str) -> set:
    """The ids that end generation: eos_token_id and the rest of an eos_token_id list (words 41..43)."""
    i = read_model_file(path)["ints"]
    return {i[k] for k in (33, 41, 42, 43) if i[k] >= 0}


# ---------------------------------------------------------------- running the engine

def run_logits(run_bin: str, model: str, toks: list, out: str) -> np.ndarray:
    cmd = [run_bin, model, "--tokens", ",".join(map(str, toks)), "--dump-logits", out]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}: rc {r.returncode}\n{r.stderr[-2000:]}"
    x = np.fromfile(out, dtype="<f4")
    V = read_model_file(model)["ints"][2]
    assert x.size == len(toks) * V, f"dump has {x.size} floats, want {len(toks)} x {V}"
    return x.reshape(len(toks), V).astype(np.float64)


def run_greedy(run_bin: str, model: str, toks: list, n: int) -> list:
    cmd = [run_bin, model, "--tokens", ",".join(map(str, toks)), "-n", str(n), "-t", "0", "--print-ids"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}: rc {r.returncode}\n{r.stderr[-2000:]}"
    return [int(s) for s in r.stdout.split()]


@pytest.fixture(scope="module")
def engine_logits(run_bin, exported, checkpoint, workdir):
    """engine_logits(variant, dtype) -> (prompt, run.c logits), cached."""
    made = {}

    def get(variant: str, dtype: str):
        if (variant, dtype) not in made:
            model = exported(variant, dtype)
            toks = prompt_ids(n_tokens_of(model))
            made[(variant, dtype)] = toks, run_logits(run_bin, model, toks,
                                                      os.path.join(workdir, f"{variant}-{dtype}.logits"))
        return made[(variant, dtype)]
    return get


def top2_margin(logits: np.ndarray) -> np.ndarray:
    s = np.sort(logits, axis=-1)
    return s[..., -1] - s[..., -2]


# ---------------------------------------------------------------- f32

@pytest.mark.parametrize("variant", VARIANTS)
def test_f32_logits_match_reference(variant, checkpoint, engine_logits):
    toks, got = engine_logits(variant, "f32")
    want = R.reference_logits(checkpoint(variant), toks)
    diff = np.abs(got - want).max(axis=1)
    bad = np.nonzero(diff > TOL)[0]
    assert bad.size == 0, (f"max |run.c - reference| = {diff.max():.3g} > {TOL}; first bad positions "
                           f"{bad[:8].tolist()} (diffs {np.round(diff[bad[:8]], 6).tolist()})")


@pytest.mark.parametrize("variant,seed", [(v, s) for v in VARIANTS for s in (1, 2)])
def test_f32_logits_other_seeds(variant, seed, run_bin, exported, checkpoint, workdir):
    """Other random weights and a longer prompt (64 tokens, repeats allowed)."""
    model = exported(variant, "f32", seed)
    rng = np.random.default_rng(100 + seed)
    toks = rng.integers(0, n_tokens_of(model), 64).tolist()
    got = run_logits(run_bin, model, toks, os.path.join(workdir, f"{variant}-s{seed}.logits"))
    want = R.reference_logits(checkpoint(variant, seed), toks)
    diff = np.abs(got - want).max(axis=1)
    assert diff.max() <= TOL, f"max |run.c - reference| = {diff.max():.3g} at position {int(diff.argmax())}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_f32_greedy_continuation(variant, run_bin, exported, checkpoint):
    model = exported(variant, "f32")
    ref = R.load(checkpoint(variant))
    toks = prompt_ids(n_tokens_of(model))
    got = run_greedy(run_bin, model, toks, N_GEN)
    eos = eos_of(model)
    assert len(got) == N_GEN or (got and got[-1] in eos and len(got) < N_GEN), \
        f"run.c printed {len(got)} ids: {got}"
    # The reference's choice at every step from one forward pass over prompt + output (causal: position t
    # sees only the ids up to t). Where it names every id run.c printed, run.c's ids are by induction
    # exactly ref.greedy's, which recomputes the prefix per token (32 passes); otherwise that decides.
    n_tok = n_tokens_of(model)
    steps = ref.forward(toks + got[:-1])[len(toks) - 1:, :n_tok].argmax(axis=1).tolist() if got else []
    if steps != got:
        want = ref.greedy(toks, len(got), n_tokens=n_tok)
        assert got == want, f"run.c {got}\n  ref {want}"


def test_padding_rows_are_masked(run_bin, exported, checkpoint):
    """v3 ships a 319-id tokenizer.json with vocab_size 600, and its padding rows are made to win
    the unmasked argmax: the greedy test above is only meaningful if that really happens."""
    model = exported("v3", "f32")
    n_tok = n_tokens_of(model)
    assert n_tok == G.tokenizer_size(G.VARIANTS["v3"]) < G.VARIANTS["v3"]["vocab_size"]
    ref = R.load(checkpoint("v3"))
    toks = prompt_ids(n_tok)
    gen = run_greedy(run_bin, model, toks, N_GEN)
    assert all(0 <= t < n_tok for t in gen)
    unmasked = ref.forward(toks + gen).argmax(axis=1)
    assert np.mean(unmasked >= n_tok) > 0.3, "padding rows do not compete; the masking check is void"


# ---------------------------------------------------------------- bf16

@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_top1(variant, checkpoint, engine_logits):
    toks, got = engine_logits(variant, "bf16")
    want = R.reference_logits(checkpoint(variant), toks, bf16_weights=True)
    g, w = got.argmax(axis=1), want.argmax(axis=1)
    near_tie = want[np.arange(len(toks)), g] >= want.max(axis=1) - BF16_TIE
    bad = np.nonzero(~near_tie)[0]
    assert bad.size == 0, (f"top-1 differs from the bf16-weight reference at positions {bad.tolist()}: "
                           f"run.c {g[bad].tolist()} ref {w[bad].tolist()}; max |diff| "
                           f"{np.abs(got - want).max():.3g}")
    # and against the unrounded reference, where rounding cannot decide the winner
    exact = R.reference_logits(checkpoint(variant), toks)
    bound = 2 * np.abs(want - exact).max(axis=1)      # per position
    decided = top2_margin(exact) > bound
    assert decided.mean() > 0.5, f"too few decided positions (rounding effects {np.round(bound, 3)})"
    bad = np.nonzero(decided & (g != exact.argmax(axis=1)))[0]
    assert bad.size == 0, f"top-1 differs from the f32 reference at decided positions {bad.tolist()}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_logits_match_rounded_reference(variant, checkpoint, engine_logits):
    """bf16 weights with fp32 arithmetic (run.c computes in fp32): run.c equals the reference on the
    same bf16-rounded weights up to float32 rounding; BF16_LOGIT_TOL = 1e-3 leaves 10x headroom
    over the f32 tolerance (measured: <= 4e-5)."""
    toks, got = engine_logits(variant, "bf16")
    want = R.reference_logits(checkpoint(variant), toks, bf16_weights=True)
    diff = np.abs(got - want).max(axis=1)
    assert diff.max() <= BF16_LOGIT_TOL, f"max diff {diff.max():.3g} at position {int(diff.argmax())}"


# ---------------------------------------------------------------- negative controls

def control_diff(variant, checkpoint, engine_logits, **kw) -> tuple:
    toks, got = engine_logits(variant, "f32")
    hf = checkpoint(variant)
    good = np.abs(got - R.reference_logits(hf, toks)).max()
    bad = np.abs(got - R.reference_logits(hf, toks, **kw)).max()
    return good, bad


@pytest.mark.parametrize("variant", [v for v in VARIANTS if R.rope_config(G.VARIANTS[v])["yarn"]])
def test_control_without_yarn_mscale(variant, checkpoint, engine_logits):
    good, bad = control_diff(variant, checkpoint, engine_logits, yarn_mscale=False)
    assert good <= TOL and bad > 100 * TOL, f"with mscale {good:.3g}, without {bad:.3g}"


@pytest.mark.parametrize("variant", ["v2", "v3", "v3fp8"])
def test_control_without_group_limit(variant, checkpoint, engine_logits):
    good, bad = control_diff(variant, checkpoint, engine_logits, group_limit=False)
    assert good <= TOL and bad > 100 * TOL, f"with group limit {good:.3g}, without {bad:.3g}"


@pytest.mark.parametrize("variant", ["v3", "v3fp8", "k2rp", "moonlight", "glm"])
def test_control_without_bias(variant, checkpoint, engine_logits):
    good, bad = control_diff(variant, checkpoint, engine_logits, use_bias=False)
    assert good <= TOL and bad > 100 * TOL, f"with bias {good:.3g}, without {bad:.3g}"


# ---------------------------------------------------------------- exported file

TOPK = {"greedy": 0, "group_limited_greedy": 1, "noaux_tc": 2}


def expected_tensors(cfg: dict, dtype: str) -> list:
    """Canonical tensor order of format v1: (name, type, shape)."""
    D, H, V = cfg["hidden_size"], cfg["num_attention_heads"], cfg["vocab_size"]
    rq, r = cfg.get("q_lora_rank") or 0, cfg["kv_lora_rank"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    E, S, Ie, I = (cfg["n_routed_experts"], cfg["n_shared_experts"], cfg["moe_intermediate_size"],
                   cfg["intermediate_size"])
    W = {"f32": "F32", "bf16": "BF16"}[dtype]
    out = [("model.embed_tokens.weight", W, (V, D))]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        out.append((p + "input_layernorm.weight", "F32", (D,)))
        if rq:
            out += [(p + "self_attn.q_a_proj.weight", W, (rq, D)),
                    (p + "self_attn.q_a_layernorm.weight", "F32", (rq,)),
                    (p + "self_attn.q_b_proj.weight", W, (H * (dn + dr), rq))]
        else:
            out.append((p + "self_attn.q_proj.weight", W, (H * (dn + dr), D)))
        out += [(p + "self_attn.kv_a_proj_with_mqa.weight", W, (r + dr, D)),
                (p + "self_attn.kv_a_layernorm.weight", "F32", (r,)),
                (p + "self_attn.kv_b_proj.weight", W, (H * (dn + dv), r)),
                (p + "self_attn.o_proj.weight", W, (D, H * dv))]
        if cfg.get("index_n_heads"):  # DeepSeek-V3.2's lightning indexer; weights_proj F32 like the router
            Hi, di = cfg["index_n_heads"], cfg["index_head_dim"]
            out += [(p + "self_attn.indexer.wq_b.weight", W, (Hi * di, rq)),
                    (p + "self_attn.indexer.wk.weight", W, (di, D)),
                    (p + "self_attn.indexer.k_norm.weight", "F32", (di,)),
                    (p + "self_attn.indexer.k_norm.bias", "F32", (di,)),
                    (p + "self_attn.indexer.weights_proj.weight", "F32", (Hi, D))]
        out.append((p + "post_attention_layernorm.weight", "F32", (D,)))
        if R.is_moe_layer(cfg, l):
            out.append((p + "mlp.gate.weight", "F32", (E, D)))
            if cfg["topk_method"] == "noaux_tc":
                out.append((p + "mlp.gate.e_score_correction_bias", "F32", (E,)))
            for e in range(E):
                q = p + f"mlp.experts.{e}."
                out += [(q + "gate_proj.weight", W, (Ie, D)), (q + "up_proj.weight", W, (Ie, D)),
                        (q + "down_proj.weight", W, (D, Ie))]
            if S:
                q = p + "mlp.shared_experts."
                out += [(q + "gate_proj.weight", W, (S * Ie, D)), (q + "up_proj.weight", W, (S * Ie, D)),
                        (q + "down_proj.weight", W, (D, S * Ie))]
        else:
            out += [(p + "mlp.gate_proj.weight", W, (I, D)), (p + "mlp.up_proj.weight", W, (I, D)),
                    (p + "mlp.down_proj.weight", W, (D, I))]
    out += [("model.norm.weight", "F32", (D,)), ("lm_head.weight", W, (V, D))]
    return out


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_header(variant, exported, checkpoint):
    m = read_model_file(exported(variant, "f32"))
    cfg = R.load(checkpoint(variant)).cfg
    rope = R.rope_config(cfg)
    y = rope["yarn"] or {}
    i, f = m["ints"], m["floats"]
    assert m["version"] == 2 and m["n_config"] == 64
    eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
    eos = eos + [-1] * (4 - len(eos))
    want_i = {0: cfg["hidden_size"], 1: cfg["num_hidden_layers"], 2: cfg["vocab_size"],
              3: cfg["num_attention_heads"], 4: cfg["q_lora_rank"] or 0, 5: cfg["kv_lora_rank"],
              6: cfg["qk_nope_head_dim"], 7: cfg["qk_rope_head_dim"], 8: cfg["v_head_dim"],
              9: cfg["intermediate_size"], 10: cfg["moe_intermediate_size"], 11: cfg["n_routed_experts"],
              12: cfg["n_shared_experts"], 13: cfg["num_experts_per_tok"], 14: cfg["n_group"],
              15: cfg["topk_group"], 16: TOPK[cfg["topk_method"]],
              17: {"softmax": 0, "sigmoid": 1}[R.scoring_func(cfg)], 18: int(cfg["norm_topk_prob"]),
              20: cfg["first_k_dense_replace"], 21: cfg.get("moe_layer_freq", 1), 23: 1 if y else 0,
              25: y.get("original_max_position_embeddings", 0), 31: cfg["max_position_embeddings"],
              32: cfg.get("bos_token_id", -1), 33: eos[0], 34: 0, 38: cfg.get("index_n_heads", 0),
              39: cfg.get("index_head_dim", 0), 40: cfg.get("index_topk", 0),
              41: eos[1], 42: eos[2], 43: eos[3], **{k: 0 for k in range(44, 64)}}
    want_f = {19: cfg["routed_scaling_factor"], 22: rope["theta"], 24: y.get("factor", 1.0),
              30: cfg["rms_norm_eps"]}
    if y:  # the format leaves these words unspecified without YaRN
        want_f.update({26: y.get("beta_fast", 32), 27: y.get("beta_slow", 1), 28: y.get("mscale", 0),
                       29: y.get("mscale_all_dim", 0)})
    for k, v in want_i.items():
        assert i[k] == v, f"config word {k}: {i[k]} != {v}"
    for k, v in want_f.items():
        assert f[k] == pytest.approx(v, rel=1e-6), f"config word {k}: {f[k]} != {v}"
    assert 0 < i[35] <= cfg["vocab_size"]


@pytest.mark.parametrize("variant,dtype", [(v, d) for v in VARIANTS for d in ("f32", "bf16")])
def test_export_tensors(variant, dtype, exported, checkpoint):
    """Canonical order, types, shapes, 64-byte alignment, exact end of file, and the data itself."""
    m = read_model_file(exported(variant, dtype))
    ref = R.load(checkpoint(variant), bf16_weights=(dtype == "bf16"))
    want = expected_tensors(ref.cfg, dtype)
    got = [t for t in m["tensors"] if t["name"] != "tokenizer"]
    assert [t["name"] for t in got] == [w[0] for w in want]
    end = 0
    for t, (name, typ, shape) in zip(got, want):
        assert t["type"] == typ, f"{name}: type {t['type']} != {typ}"
        shp = (t["rows"],) if t["ndim"] == 1 else (t["rows"], t["cols"])
        assert shp == shape and (t["ndim"] == 2 or t["cols"] == 1), f"{name}: shape {shp} != {shape}"
        assert t["offset"] % 64 == 0 and t["offset"] >= end, f"{name}: offset {t['offset']}"
        assert t["nbytes"] == int(np.prod(shape)) * (4 if typ == "F32" else 2)
        end = t["offset"] + t["nbytes"]
        x = tensor_data(m, t).astype(np.float64)
        np.testing.assert_array_equal(x, ref.w[name], err_msg=name)
    last = m["tensors"][-1]
    assert m["size"] == last["offset"] + last["nbytes"]


# ---------------------------------------------------------------- bad input to run.c

def corrupt(src: str, dst: str, edit) -> str:
    buf = bytearray(open(src, "rb").read())
    out = edit(buf)
    buf = buf if out is None else out
    open(dst, "wb").write(bytes(buf))
    return dst


def entry_offset(i: int) -> int:
    """File offset of tensor-table entry i (format v2 with 64 config words)."""
    return 12 + 4 * 64 + 4 + 128 * i


def set_u32(off: int, v: int):
    def edit(b):
        b[off:off + 4] = struct.pack("<I", v)
    return edit


def set_u64(off: int, v: int):
    def edit(b):
        b[off:off + 8] = struct.pack("<Q", v)
    return edit


BAD_FILES = {
    "truncated": lambda b: b[:len(b) - 1000],
    "header_only": lambda b: b[:100],
    "empty": lambda b: bytearray(),
    "bad_magic": lambda b: b"KEES" + b[4:],
    "version_3": set_u32(4, 3),
    "version_1_words": set_u32(4, 1),        # a v1 header on a v2 file: n_config must be 40
    "reserved_word": set_u32(12 + 4 * 50, 7),
    "n_config_39": set_u32(8, 39),
    "n_heads_0": set_u32(12 + 4 * 3, 0),
    "dim_huge": set_u32(12, 1 << 30),
    "tensor_past_end": set_u64(entry_offset(3) + 96 + 16, 1 << 40),
    "tensor_misaligned": set_u64(entry_offset(3) + 96 + 16, 100),
    "tensor_renamed": lambda b: b[:entry_offset(0)] + b"model.embed_tokens.weighX" + b[entry_offset(0) + 25:],
    "tensor_wrong_type": set_u32(entry_offset(1) + 96, 1),   # input_layernorm as BF16
    "tensor_wrong_shape": set_u32(entry_offset(0) + 96 + 8, 7),
    "n_tensors_short": set_u32(12 + 4 * 64, 5),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_run_rejects_bad_model_file(case, run_bin, exported, workdir):
    bad = corrupt(exported("v2", "f32"), os.path.join(workdir, f"bad-{case}.bin"), BAD_FILES[case])
    r = subprocess.run([run_bin, bad, "--tokens", "1,2,3", "--dump-logits", os.path.join(workdir, "bad.f32")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode > 0, f"{case}: rc {r.returncode} (0 = accepted, < 0 = killed by a signal)\n{r.stderr}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, f"{case}: want one clear error line, got {lines}"


@pytest.mark.parametrize("args", [["--tokens", "1,2,100000"], ["--tokens", "1,-2"], ["--tokens", "1,x"],
                                  ["--tokens", ""], ["-n", "-5", "--tokens", "1"]])
def test_run_rejects_bad_arguments(args, run_bin, exported, workdir):
    r = subprocess.run([run_bin, exported("v2", "f32")] + args + ["--dump-logits", os.path.join(workdir, "bad.f32")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode > 0, f"{args}: rc {r.returncode}\n{r.stderr}"


def test_run_missing_file(run_bin, workdir):
    r = subprocess.run([run_bin, os.path.join(workdir, "no-such.bin"), "--tokens", "1"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode > 0 and r.stderr.strip()


# ---------------------------------------------------------------- the bf16 latent cache

BF16_CACHE_MEDIAN = 1e-2


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_cache_logits(variant, run_bin, exported, checkpoint, workdir):
    """--cache-type bf16 rounds each cached c and k_pe to bf16 (nearest even); the fair reference
    rounds its own (fp64) latents the same way. Where a value lies within fp32 error of a bf16
    rounding midpoint, run.c and the reference round it apart, one bf16 step (0.4%); these random
    models amplify that at later positions (up to 3e-2 measured over 200 positions), so the bound is
    on the median position's max |diff|: measured 5e-6 to 3e-4, but 6.6e-3 for k2rp once a change in
    the order of W_UK^T's sums moved one early flip (the f32 cache: 1e-4 everywhere, above), while
    truncating instead of rounding puts it at 5e-2 to 0.2 (all nine variants fail)."""
    model = exported(variant, "f32")
    toks = (prompt_ids(n_tokens_of(model)) * 5)[:200]
    out = os.path.join(workdir, f"{variant}-bf16cache.logits")
    cmd = [run_bin, model, "--tokens", ",".join(map(str, toks)), "--dump-logits", out, "--cache-type", "bf16"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = np.fromfile(out, "<f4").reshape(len(toks), -1).astype(np.float64)
    diff = np.abs(got - R.reference_logits(checkpoint(variant), toks, bf16_cache=True)).max(axis=1)
    assert np.median(diff) <= BF16_CACHE_MEDIAN, f"median position's max |diff| {np.median(diff):.3g}"


# ---------------------------------------------------------------- --bench

BENCH_LINE = r"bench test=(pp|tg)(\d+) depth=(\d+) tok_s=[0-9.]+ sd=[0-9.]+ weight_bytes_per_token=\d+ threads=\d+"
LEGACY_LINE = r"bench pp=[0-9.]+ tg=[0-9.]+ ttft_ms=[0-9.]+ weight_bytes_per_token=\d+ threads=\d+"


def test_bench_lines(run_bin, exported):
    """--bench speaks llama-bench (-p, -n, -d lists, -r): a markdown table of every test at every
    depth, one machine-readable line per test, and last the line older scripts read. Format only."""
    import re
    model = exported("v2", "f32")
    r = subprocess.run([run_bin, model, "--bench", "-p", "8,16", "-n", "4", "-d", "0,70", "-r", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    names = ["pp8", "pp16", "tg4", "pp8 @ d70", "pp16 @ d70", "tg4 @ d70"]
    assert lines[:2] == ["| test | tok/s |", "|---|---|"], lines
    for line, name in zip(lines[2:8], names):
        assert re.fullmatch(rf"\| {name} \| [0-9.]+ ± [0-9.]+ \|", line), line
    tests = [re.fullmatch(BENCH_LINE, line) for line in lines[8:14]]
    assert all(tests), lines[8:14]
    assert [f"{m[1]}{m[2]}" + (f" @ d{m[3]}" if m[3] != "0" else "") for m in tests] == names
    assert len(lines) == 15 and re.fullmatch(LEGACY_LINE, lines[14]), lines[14:]
    # --bench alone: pp64 and tg32, as before
    r = subprocess.run([run_bin, model, "--bench"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and re.fullmatch(LEGACY_LINE, r.stdout.splitlines()[-1]), r.stdout
    assert [l.split()[1] for l in r.stdout.splitlines() if l.startswith("bench test=")] == ["test=pp64", "test=tg32"]


@pytest.mark.parametrize("args", [["--bench", "-p", "8,x"], ["--bench", "-r", "0"], ["--bench", "-n", "-4"],
                                  ["--bench", "-d", "70", "-c", "100"], ["-d", "5", "--tokens", "1"],
                                  ["--cache-type", "f16", "--tokens", "1"], ["-p", "2", "--tokens", "1"]])
def test_bench_rejects_bad_arguments(args, run_bin, exported):
    """Outside --bench, -p and -n keep their meanings (top-p, tokens to generate), and -d/-r are errors."""
    r = subprocess.run([run_bin, exported("v2", "f32")] + args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)


def test_p_and_n_outside_bench(run_bin, exported):
    r = subprocess.run([run_bin, exported("v2", "f32"), "--tokens", "1,2", "-n", "3", "-p", "0.5", "-t", "0", "--print-ids"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and len(r.stdout.split()) == 3, r.stdout + r.stderr


# ---------------------------------------------------------------- edges

@pytest.mark.parametrize("variant", ["v2", "v2lite", "v3fp8"])
def test_f32_long_sequence(variant, run_bin, exported, checkpoint, workdir):
    """256 positions: the latent cache grows well past the short prompts (four blocks of attention),
    YaRN angles get large."""
    model = exported(variant, "f32")
    toks = np.random.default_rng(5).integers(0, n_tokens_of(model), 256).tolist()
    got = run_logits(run_bin, model, toks, os.path.join(workdir, f"{variant}-long.logits"))
    want = R.reference_logits(checkpoint(variant), toks)
    diff = np.abs(got - want).max(axis=1)
    assert diff.max() <= TOL, f"max diff {diff.max():.3g} at position {int(diff.argmax())}"


def test_single_token_and_determinism(run_bin, exported, checkpoint, workdir):
    model = exported("v3", "f32")
    got = run_logits(run_bin, model, [7], os.path.join(workdir, "one.logits"))
    assert np.abs(got - R.reference_logits(checkpoint("v3"), [7])).max() <= TOL
    toks = prompt_ids(n_tokens_of(model))
    x = run_logits(run_bin, model, toks, os.path.join(workdir, "det1.f32"))
    y = run_logits(run_bin, model, toks, os.path.join(workdir, "det2.f32"))
    assert np.array_equal(x, y), "two identical runs gave different logits"


# ---------------------------------------------------------------- sampling never leaves the real vocabulary

def run_sample(run_bin, model, toks, *opts):
    cmd = [run_bin, model, "--tokens", ",".join(map(str, toks)), "-n", "24", "--print-ids"] + list(opts)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{' '.join(cmd)}: rc {r.returncode}\n{r.stderr[-2000:]}"
    return [int(x) for x in r.stdout.split()]


def test_sampling_masks_padding_and_is_seeded(run_bin, exported):
    model = exported("v3", "f32")
    n_tok = n_tokens_of(model)
    toks = prompt_ids(n_tok)[:10]
    outs = []
    for seed in range(1, 7):
        for opts in (["-t", "1.5", "-p", "1"], ["-t", "1.0", "-p", "0.95"], ["-t", "1.2", "-k", "50"]):
            out = run_sample(run_bin, model, toks, "-s", str(seed), *opts)
            assert all(0 <= t < n_tok for t in out), f"sampled a padding id with {opts} seed {seed}: {out}"
            outs.append(out)
    assert run_sample(run_bin, model, toks, "-s", "3", "-t", "1.0") == run_sample(run_bin, model, toks, "-s", "3", "-t", "1.0")
    assert len({tuple(o) for o in outs}) > len(outs) // 2, "different seeds give the same samples"
    # top-k 1 at any temperature is greedy
    assert run_sample(run_bin, model, toks, "-s", "9", "-t", "1.0", "-k", "1", "-p", "1") == \
        run_sample(run_bin, model, toks, "-t", "0")


# ---------------------------------------------------------------- YaRN configs missing mscale keys

@pytest.mark.parametrize("drop", [("mscale", "mscale_all_dim"), ("mscale",)])
def test_yarn_missing_mscale_keys(drop, run_bin, workdir):
    """HF remote defaults are mscale=1, mscale_all_dim=0: with both keys absent cos/sin get
    0.1 ln(s) + 1 and the softmax no factor; with only mscale absent cos/sin get
    mscale(s, 1) / mscale(s, mscale_all_dim). The reference follows the HF code."""
    import json
    import sys
    hf = G.write_checkpoint("v2lite", os.path.join(workdir, "hf", "nomscale-" + "-".join(drop)), seed=3)
    path = os.path.join(hf, "config.json")
    cfg = json.load(open(path))
    for k in drop:
        del cfg["rope_scaling"][k]
    json.dump(cfg, open(path, "w"), indent=2)
    out = hf + ".bin"
    exporter = os.environ.get("SEEK_EXPORT") or os.path.join(os.path.dirname(R.__file__), "..", "export.py")
    r = subprocess.run([sys.executable, exporter, hf, out, "--dtype", "f32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    toks = prompt_ids(cfg["vocab_size"])
    got = run_logits(run_bin, out, toks, out + ".logits")
    ref = R.Reference(hf)
    assert R.rope_frequencies(ref.rope, 16)[1] != 1.0
    assert np.abs(got - ref.forward(toks)).max() <= TOL


def test_version_1_file_still_runs(run_bin, exported, workdir):
    """run.c still reads format v1 (40 config words; the v2 words 38..43 take their defaults: no indexer, no
    extra stop ids). The v2 file rewritten as v1, tensor data left where it is, gives the same logits."""
    src = read_model_file(exported("v3", "f32"))
    buf, n_tensors = src["buf"], len(src["tensors"])
    table_at = 12 + 4 * 64 + 4          # the table and the data stay at their offsets
    head = b"SEEK" + struct.pack("<II", 1, 40) + buf[12:12 + 4 * 38] + bytes(8) + struct.pack("<I", n_tensors)
    head += buf[table_at:table_at + 128 * n_tensors]
    data_at = table_at + 128 * n_tensors
    v1 = os.path.join(workdir, "v3-as-v1.bin")
    with open(v1, "wb") as f:
        f.write(head + bytes(data_at - len(head)) + buf[data_at:])
    toks = prompt_ids(n_tokens_of(exported("v3", "f32")))[:12]
    a = run_logits(run_bin, exported("v3", "f32"), toks, os.path.join(workdir, "v2file.logits"))
    b = run_logits(run_bin, v1, toks, os.path.join(workdir, "v1file.logits"))
    assert np.array_equal(a, b)

