"""Tests for export.py: tiny safetensors checkpoints are written here by our own writer, exported,
and the model file is read back by an independent reader and compared with values computed here
(bf16 rounding and FP8 block dequantisation are recomputed element by element / block by block).

Run: /usr/bin/python3 -m pytest tests/test_export.py
"""
import contextlib
import importlib.util
import io
import json
import math
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import gen_checkpoints  # noqa: E402

# The exporter under test, also for the in-process tests (tokenizer hook, chunking, clean-up, the
# CLI's error contract): $SEEK_EXPORT if set (conftest.py), else the repository's export.py.
EXPORT = os.environ.get("SEEK_EXPORT") or os.path.join(ROOT, "export.py")
_spec = importlib.util.spec_from_file_location("export", EXPORT)
export = importlib.util.module_from_spec(_spec)
sys.modules["export"] = export
_spec.loader.exec_module(export)

F32, BF16, U8 = 0, 1, 16


# ---------------------------------------------------------------------------------------------
# a minimal safetensors writer


def st_entry(dtype: str, array: np.ndarray) -> tuple:
    """(dtype, shape, raw bytes) for the writer; the array holds the raw element values."""
    return (dtype, list(array.shape), np.ascontiguousarray(array).tobytes())


def write_safetensors(path, tensors: dict, lie=None) -> None:
    """tensors: name -> (dtype, shape, bytes). `lie(header)` may corrupt the header dict."""
    header, pos = {}, 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + len(data)]}
        pos += len(data)
    header["__metadata__"] = {"format": "pt"}
    if lie:
        lie(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for _, _, data in tensors.values():
            f.write(data)


# ---------------------------------------------------------------------------------------------
# tiny model configs and their tensors (names/order written out from the team brief)

V3_CONFIG = {
    "model_type": "deepseek_v3", "hidden_size": 40, "num_hidden_layers": 3, "vocab_size": 50,
    "num_attention_heads": 2, "q_lora_rank": 24, "kv_lora_rank": 20, "qk_nope_head_dim": 12,
    "qk_rope_head_dim": 8, "v_head_dim": 10, "intermediate_size": 36,
    "moe_intermediate_size": 16, "n_routed_experts": 4, "n_shared_experts": 1,
    "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1, "topk_method": "noaux_tc",
    "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "rope_theta": 10000.0,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 64,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.707},
    "rms_norm_eps": 1e-6, "max_position_embeddings": 2560, "bos_token_id": 0,
    "eos_token_id": 1, "tie_word_embeddings": False, "num_nextn_predict_layers": 1,
}

# V2-Lite-like: no q LoRA, greedy softmax, no bias, moe_layer_freq 2 (layer 1 dense, 2 MoE)
V2_CONFIG = {
    "model_type": "deepseek_v2", "hidden_size": 32, "num_hidden_layers": 3, "vocab_size": 40,
    "num_attention_heads": 2, "q_lora_rank": None, "kv_lora_rank": 16, "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 4, "v_head_dim": 6, "intermediate_size": 28,
    "moe_intermediate_size": 12, "n_routed_experts": 3, "n_shared_experts": 2,
    "num_experts_per_tok": 2, "topk_method": "greedy", "first_k_dense_replace": 1,
    "moe_layer_freq": 2, "rope_theta": 10000, "rope_scaling": None, "rms_norm_eps": 1e-5,
    "max_position_embeddings": 512, "bos_token_id": 30, "eos_token_id": [7, 8],
}


def is_moe(cfg: dict, layer: int) -> bool:
    return bool(cfg.get("n_routed_experts")) and layer >= cfg.get("first_k_dense_replace", 0) \
        and layer % cfg.get("moe_layer_freq", 1) == 0


def layer_shapes(cfg: dict, layer: int) -> list:
    """[(name, shape, is_router_or_1d)] in the canonical order."""
    D, H, r = cfg["hidden_size"], cfg["num_attention_heads"], cfg["kv_lora_rank"]
    rq = cfg.get("q_lora_rank") or 0
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    p = f"model.layers.{layer}."
    out = [(p + "input_layernorm.weight", (D,))]
    if rq:
        out += [(p + "self_attn.q_a_proj.weight", (rq, D)),
                (p + "self_attn.q_a_layernorm.weight", (rq,)),
                (p + "self_attn.q_b_proj.weight", (H * (dn + dr), rq))]
    else:
        out += [(p + "self_attn.q_proj.weight", (H * (dn + dr), D))]
    out += [(p + "self_attn.kv_a_proj_with_mqa.weight", (r + dr, D)),
            (p + "self_attn.kv_a_layernorm.weight", (r,)),
            (p + "self_attn.kv_b_proj.weight", (H * (dn + dv), r)),
            (p + "self_attn.o_proj.weight", (D, H * dv)),
            (p + "post_attention_layernorm.weight", (D,))]
    if is_moe(cfg, layer):
        E, Ie, S = cfg["n_routed_experts"], cfg["moe_intermediate_size"], cfg["n_shared_experts"]
        out += [(p + "mlp.gate.weight", (E, D))]
        if cfg.get("topk_method") == "noaux_tc":
            out += [(p + "mlp.gate.e_score_correction_bias", (E,))]
        for e in range(E):
            out += [(p + f"mlp.experts.{e}.gate_proj.weight", (Ie, D)),
                    (p + f"mlp.experts.{e}.up_proj.weight", (Ie, D)),
                    (p + f"mlp.experts.{e}.down_proj.weight", (D, Ie))]
        if S:
            out += [(p + "mlp.shared_experts.gate_proj.weight", (S * Ie, D)),
                    (p + "mlp.shared_experts.up_proj.weight", (S * Ie, D)),
                    (p + "mlp.shared_experts.down_proj.weight", (D, S * Ie))]
    else:
        I = cfg["intermediate_size"]
        out += [(p + "mlp.gate_proj.weight", (I, D)), (p + "mlp.up_proj.weight", (I, D)),
                (p + "mlp.down_proj.weight", (D, I))]
    return out


def canonical(cfg: dict) -> list:
    V, D = cfg["vocab_size"], cfg["hidden_size"]
    out = [("model.embed_tokens.weight", (V, D))]
    for layer in range(cfg["num_hidden_layers"]):
        out += layer_shapes(cfg, layer)
    return out + [("model.norm.weight", (D,)), ("lm_head.weight", (V, D))]


def always_f32(name: str, shape: tuple) -> bool:
    return len(shape) == 1 or name.endswith("mlp.gate.weight")


def mtp_shapes(cfg: dict) -> list:
    """The MTP module (DeepSeek-V3 §2.2): layer index n_layers, must be skipped."""
    L, D, V = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["vocab_size"]
    p = f"model.layers.{L}."
    extra = [(p + "embed_tokens.weight", (V, D)), (p + "enorm.weight", (D,)),
             (p + "hnorm.weight", (D,)), (p + "eh_proj.weight", (D, 2 * D)),
             (p + "shared_head.norm.weight", (D,)), (p + "shared_head.head.weight", (V, D))]
    return extra + layer_shapes(dict(cfg, first_k_dense_replace=0), L)


# ---------------------------------------------------------------------------------------------
# source values: float32 "true" values and the raw bytes of a given source dtype


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def make_source(rng, shape: tuple, dtype: str) -> tuple:
    """(safetensors entry, exact float32 values the file represents)."""
    x = rng.standard_normal(shape).astype(np.float32)
    if dtype == "F32":
        return st_entry("F32", x), x
    if dtype == "F16":
        h = x.astype(np.float16)
        return st_entry("F16", h), h.astype(np.float32)
    if dtype == "BF16":
        bits = (x.view(np.uint32) >> 16).astype(np.uint16)  # any bf16 pattern will do
        return st_entry("BF16", bits), bf16_bits_to_f32(bits)
    raise ValueError(dtype)


def make_checkpoint(hf_dir, cfg: dict, dtypes=("F32",), rng_seed=0, mtp=False,
                    drop=(), n_shards=1) -> dict:
    """Write config.json + safetensors (sharded if n_shards > 1); returns name -> (src dtype,
    float32 values) for every canonical tensor."""
    rng = np.random.default_rng(rng_seed)
    os.makedirs(hf_dir, exist_ok=True)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(cfg, f)
    entries, truth = {}, {}
    shapes = canonical(cfg) + (mtp_shapes(cfg) if mtp else [])
    for i, (name, shape) in enumerate(shapes):
        if name in drop:
            continue
        dtype = dtypes[i % len(dtypes)]
        entries[name], values = make_source(rng, shape, dtype)
        truth[name] = (dtype, values)
    write_entries(hf_dir, entries, n_shards)
    return truth


def write_entries(hf_dir, entries: dict, n_shards: int) -> None:
    if n_shards == 1:
        write_safetensors(os.path.join(hf_dir, "model.safetensors"), entries)
        return
    names = list(entries)
    files = [f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors" for k in range(n_shards)]
    weight_map = {}
    for k, fname in enumerate(files):
        part = names[k::n_shards]  # interleaved, so shards are not in table order
        write_safetensors(os.path.join(hf_dir, fname), {n: entries[n] for n in part})
        weight_map.update({n: fname for n in part})
    with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


# ---------------------------------------------------------------------------------------------
# an independent reader of the model file


def read_model(path) -> dict:
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"SEEK"
    version, n_config = struct.unpack_from("<II", data, 4)
    words = data[12:12 + 4 * n_config]
    (n_tensors,) = struct.unpack_from("<I", data, 12 + 4 * n_config)
    table = 16 + 4 * n_config
    tensors, end = [], table + 128 * n_tensors
    for k in range(n_tensors):
        name, ttype, ndim, rows, cols, off, nbytes = struct.unpack_from(
            "<96sIIIIQQ", data, table + 128 * k)
        assert name.count(b"\0") >= 1 and name.rstrip(b"\0").find(b"\0") == -1
        assert off % 64 == 0 and off >= end, "aligned, in order, no overlap"
        assert data[end:off] == b"\0" * (off - end), "zero padding"
        end = off + nbytes
        dt = {F32: "<f4", BF16: "<u2", U8: "u1"}[ttype]
        arr = np.frombuffer(data, dtype=dt, count=rows * cols, offset=off)
        assert arr.nbytes == nbytes
        shape = (rows,) if ndim == 1 else (rows, cols)
        if ndim == 1:
            assert cols == 1
        tensors.append({"name": name.rstrip(b"\0").decode(), "type": ttype, "shape": shape,
                        "array": arr.reshape(shape)})
    assert end == len(data), "file ends at the end of the last tensor"
    return {"version": version, "n_config": n_config, "words": words, "tensors": tensors}


def word_i(m: dict, k: int) -> int:
    return struct.unpack_from("<i", m["words"], 4 * k)[0]


def word_f(m: dict, k: int) -> float:
    return struct.unpack_from("<f", m["words"], 4 * k)[0]


def word_u(m: dict, k: int) -> int:
    return struct.unpack_from("<I", m["words"], 4 * k)[0]


def run_export(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, EXPORT, *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def ok_export(*args) -> subprocess.CompletedProcess:
    p = run_export(*args)
    assert p.returncode == 0, p.stderr
    return p


# ---------------------------------------------------------------------------------------------
# independent bf16 rounding and FP8 decoding


def ref_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even by comparing distances to the two bf16 neighbours (finite x)."""
    out = np.empty(x.size, dtype=np.uint16)
    for k, v in enumerate(x.astype(np.float32).ravel()):
        bits = int(np.float32(v).view(np.uint32))
        lo = bits & 0xFFFF0000
        hi = lo + 0x10000
        f_lo = float(np.uint32(lo).view(np.float32))
        f_hi = float(np.uint32(hi).view(np.float32))
        d_lo, d_hi = abs(float(v) - f_lo), abs(f_hi - float(v))
        pick = lo if d_lo < d_hi or (d_lo == d_hi and (lo >> 16) % 2 == 0) else hi
        out[k] = pick >> 16
    return out.reshape(x.shape)


def ref_fp8(byte: int) -> float:
    sign = -1.0 if byte & 0x80 else 1.0
    exp, man = (byte >> 3) & 15, byte & 7
    if exp == 15 and man == 7:
        return math.nan
    if exp == 0:
        return sign * math.ldexp(man, -9)            # 2^-6 * m/8
    return sign * math.ldexp(8 + man, exp - 10)      # 2^(e-7) * (1 + m/8)


FP8_REF = np.array([ref_fp8(b) for b in range(256)], dtype=np.float64)


def ref_dequant(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Block by block: W[block] = fp8(Q[block]) * S[bi, bj] (128x128, partial edges)."""
    w = np.empty(q.shape, dtype=np.float64)
    for bi in range(s.shape[0]):
        for bj in range(s.shape[1]):
            rows, cols = slice(128 * bi, 128 * bi + 128), slice(128 * bj, 128 * bj + 128)
            w[rows, cols] = FP8_REF[q[rows, cols]] * float(s[bi, bj])
    return w.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# tests: header, config words, tensors


def check_config_words(m: dict, cfg: dict, n_tokens: int) -> None:
    assert m["version"] == 2 and m["n_config"] == 64
    rope = cfg.get("rope_scaling") or {}
    moe = {"greedy": 0, "group_limited_greedy": 1, "noaux_tc": 2}
    eos = cfg["eos_token_id"] if isinstance(cfg["eos_token_id"], list) else [cfg["eos_token_id"]]
    eos = eos + [-1] * (4 - len(eos))  # an eos_token_id list fills words 33, 41, 42, 43
    expect_i = {
        0: cfg["hidden_size"], 1: cfg["num_hidden_layers"], 2: cfg["vocab_size"],
        3: cfg["num_attention_heads"], 4: cfg.get("q_lora_rank") or 0, 5: cfg["kv_lora_rank"],
        6: cfg["qk_nope_head_dim"], 7: cfg["qk_rope_head_dim"], 8: cfg["v_head_dim"],
        9: cfg["intermediate_size"], 10: cfg["moe_intermediate_size"],
        11: cfg["n_routed_experts"], 12: cfg["n_shared_experts"],
        13: cfg["num_experts_per_tok"], 14: cfg.get("n_group", 1), 15: cfg.get("topk_group", 1),
        16: moe[cfg.get("topk_method", "greedy")],
        17: {"softmax": 0, "sigmoid": 1}[cfg.get("scoring_func", "softmax")],
        18: int(cfg.get("norm_topk_prob", False)), 20: cfg.get("first_k_dense_replace", 0),
        21: cfg.get("moe_layer_freq", 1), 23: 1 if rope else 0,
        25: rope.get("original_max_position_embeddings", 0),
        31: cfg["max_position_embeddings"], 32: cfg.get("bos_token_id", -1),
        33: eos[0], 34: 0, 35: n_tokens, 38: 0, 39: 0, 40: 0, 41: eos[1], 42: eos[2], 43: eos[3],
        **{k: 0 for k in range(44, 64)},
    }
    for k, v in expect_i.items():
        assert word_i(m, k) == v, f"config word {k}"
    expect_f = {19: cfg.get("routed_scaling_factor", 1.0), 22: cfg["rope_theta"],
                24: rope.get("factor", 1.0), 30: cfg["rms_norm_eps"]}
    if rope:
        expect_f.update({26: rope["beta_fast"], 27: rope["beta_slow"], 28: rope["mscale"],
                         29: rope["mscale_all_dim"]})
    for k, v in expect_f.items():
        assert word_f(m, k) == np.float32(v), f"config word {k}"


def check_tensors(m: dict, cfg: dict, truth: dict, dtype: str) -> None:
    expected = canonical(cfg)
    assert [t["name"] for t in m["tensors"]] == [n for n, _ in expected]
    for t, (name, shape) in zip(m["tensors"], expected):
        assert t["shape"] == shape, name
        src_dtype, values = truth[name]
        if always_f32(name, shape) or dtype == "f32":
            assert t["type"] == F32, name
            np.testing.assert_array_equal(t["array"], values, err_msg=name)
        else:
            assert t["type"] == BF16, name
            want = ((values.view(np.uint32) >> 16).astype(np.uint16) if src_dtype == "BF16"
                    else ref_bf16(values))
            np.testing.assert_array_equal(t["array"], want, err_msg=name)


@pytest.mark.parametrize("cfg", [V3_CONFIG, V2_CONFIG], ids=["v3", "v2lite"])
@pytest.mark.parametrize("dtype", ["f32", "bf16"])
def test_export_mixed_source_dtypes(tmp_path, cfg, dtype):
    truth = make_checkpoint(tmp_path / "hf", cfg, dtypes=("F32", "BF16", "F16"))
    out = tmp_path / "model.bin"
    ok_export(tmp_path / "hf", out, "--dtype", dtype)
    m = read_model(out)
    check_config_words(m, cfg, n_tokens=cfg["vocab_size"])
    check_tensors(m, cfg, truth, dtype)
    assert word_u(m, 36) == 0 and word_u(m, 37) == 0  # no tokenizer embedded
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600


def test_default_dtype_is_f32_and_bf16_source_copied_bit_exact(tmp_path):
    truth = make_checkpoint(tmp_path / "hf", V3_CONFIG, dtypes=("BF16",))
    ok_export(tmp_path / "hf", tmp_path / "a.bin")
    check_tensors(read_model(tmp_path / "a.bin"), V3_CONFIG, truth, "f32")
    ok_export(tmp_path / "hf", tmp_path / "b.bin", "--dtype", "bf16")
    check_tensors(read_model(tmp_path / "b.bin"), V3_CONFIG, truth, "bf16")


def test_bf16_rounding_hand_values():
    one = 1.0
    values = np.array([
        one + 2**-8,               # exact tie between 1 and 1+2^-7 -> even (1.0)
        one + 3 * 2**-8,           # tie between 1+2^-7 and 1+2^-6 -> even (1+2^-6)
        one + 2**-8 + 2**-20,      # just above the tie -> up
        one + 2**-8 - 2**-20,      # just below -> down
        -(one + 3 * 2**-8),        # sign is independent
        3.4028235e38,              # f32 max > bf16 max + half an ulp -> inf (RNE)
        float("inf"), float("-inf"), 0.0, -0.0, 2**-140,
    ], dtype=np.float32)
    want = [0x3F80, 0x3F82, 0x3F81, 0x3F80, 0xBF82, 0x7F80, 0x7F80, 0xFF80, 0x0000, 0x8000,
            int(np.float32(2**-140).view(np.uint32)) >> 16]
    assert export.to_bf16(values).tolist() == want
    nan = export.to_bf16(np.array([np.nan, -np.nan], dtype=np.float32))
    assert all(bf16_bits_to_f32(nan) != bf16_bits_to_f32(nan))  # NaN stays NaN
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(4000) * 10.0 ** rng.integers(-30, 30, 4000)).astype(np.float32)
    np.testing.assert_array_equal(export.to_bf16(x), ref_bf16(x))


def test_fp8_table_hand_values():
    t = export.FP8_TABLE
    assert t[0x38] == 1.0 and t[0x40] == 2.0 and t[0xB8] == -1.0 and t[0x7E] == 448.0
    assert t[0x08] == 2**-6 and t[0x01] == 2**-9 and t[0x07] == 7 * 2**-9
    assert t[0x3C] == 1.5 and t[0x00] == 0.0 and np.signbit(t[0x80])
    assert np.isnan(t[0x7F]) and np.isnan(t[0xFF]) and not np.isinf(t).any()
    np.testing.assert_array_equal(t, FP8_REF.astype(np.float32))


# ---------------------------------------------------------------------------------------------
# FP8 checkpoint, sharded, with an MTP layer


FP8_CONFIG = dict(V3_CONFIG, hidden_size=136, num_hidden_layers=2, vocab_size=30,
                  q_lora_rank=40, kv_lora_rank=130, intermediate_size=260,
                  moe_intermediate_size=24, n_routed_experts=2, num_experts_per_tok=1,
                  n_group=1, topk_group=1, quantization_config={
                      "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                      "weight_block_size": [128, 128]})


def is_fp8_weight(name: str) -> bool:
    """As in V3 checkpoints (the official inference/fp8_cast_bf16.py: every weight with a
    _scale_inv companion): projections inside attention and every MLP."""
    return name.endswith("_proj.weight") and ".layers." in name and "eh_proj" not in name


def make_fp8_checkpoint(hf_dir, cfg: dict, n_shards: int = 3) -> dict:
    rng = np.random.default_rng(7)
    os.makedirs(hf_dir, exist_ok=True)
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        json.dump(cfg, f)
    entries, truth = {}, {}
    for name, shape in canonical(cfg) + mtp_shapes(cfg):
        if is_fp8_weight(name):
            q = rng.integers(0, 256, shape, dtype=np.uint8)
            q[(q & 0x7F) == 0x7F] = 0x38  # no NaN codes in weights
            s = rng.uniform(0.25, 4.0, (-(-shape[0] // 128), -(-shape[1] // 128)))
            s = s.astype(np.float32)
            entries[name] = st_entry("F8_E4M3", q)
            entries[name + "_scale_inv"] = st_entry("F32", s)
            truth[name] = ("F8_E4M3", ref_dequant(q, s))
        else:
            dtype = "F32" if name.endswith("e_score_correction_bias") else "BF16"
            entries[name], values = make_source(rng, shape, dtype)
            truth[name] = (dtype, values)
    write_entries(hf_dir, entries, n_shards)
    return truth


def test_fp8_sharded_with_mtp(tmp_path):
    hf = tmp_path / "hf"
    truth = make_fp8_checkpoint(hf, FP8_CONFIG)
    # partial edge blocks really are exercised: 138 = 128 + 10 rows, 260 = 2*128 + 4, 136 = 128 + 8
    assert truth["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"][1].shape == (138, 136)
    ok_export(hf, tmp_path / "f32.bin")
    check_tensors(read_model(tmp_path / "f32.bin"), FP8_CONFIG, truth, "f32")
    ok_export(hf, tmp_path / "bf16.bin", "--dtype", "bf16")
    check_tensors(read_model(tmp_path / "bf16.bin"), FP8_CONFIG, truth, "bf16")


def test_fp8_small_chunks_in_process(tmp_path, monkeypatch):
    """Tiny row blocks: FP8 chunks start at row 128, 256 and other tensors are split too."""
    hf = tmp_path / "hf"
    truth = make_fp8_checkpoint(hf, FP8_CONFIG, n_shards=1)
    monkeypatch.setattr(export, "CHUNK_ELEMENTS", 1000)
    export.export_model(str(hf), str(tmp_path / "m.bin"), "f32")
    check_tensors(read_model(tmp_path / "m.bin"), FP8_CONFIG, truth, "f32")


def test_mtp_layer_skipped_bf16(tmp_path):
    truth = make_checkpoint(tmp_path / "hf", V3_CONFIG, dtypes=("BF16", "F32"), mtp=True)
    ok_export(tmp_path / "hf", tmp_path / "m.bin")
    m = read_model(tmp_path / "m.bin")
    assert not any(".layers.3." in t["name"] for t in m["tensors"])
    check_tensors(m, V3_CONFIG, truth, "f32")


def test_sharded_index(tmp_path):
    truth = make_checkpoint(tmp_path / "hf", V2_CONFIG, dtypes=("F32", "BF16"), n_shards=4)
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    ok_export(tmp_path / "hf", tmp_path / "m.bin", "--dtype", "bf16")
    check_tensors(read_model(tmp_path / "m.bin"), V2_CONFIG, truth, "bf16")


# ---------------------------------------------------------------------------------------------
# config spellings


def exported_words(tmp_path, cfg: dict, name: str) -> dict:
    make_checkpoint(tmp_path / name, cfg)
    ok_export(tmp_path / name, tmp_path / (name + ".bin"))
    return read_model(tmp_path / (name + ".bin"))


def test_rope_parameters_spelling(tmp_path):
    a = exported_words(tmp_path, V3_CONFIG, "rope_scaling")
    rope = dict(V3_CONFIG["rope_scaling"])
    rope["rope_type"] = rope.pop("type")
    rope["rope_theta"] = 10000.0
    new = {k: v for k, v in V3_CONFIG.items() if k not in ("rope_scaling", "rope_theta")}
    b = exported_words(tmp_path, dict(new, rope_parameters=rope), "rope_parameters")
    assert a["words"] == b["words"]
    assert word_i(b, 23) == 1 and word_f(b, 24) == 40.0 and word_f(b, 29) == np.float32(0.707)


def test_rope_defaults_and_theta_inside_parameters(tmp_path):
    cfg = {k: v for k, v in V2_CONFIG.items() if k not in ("rope_scaling", "rope_theta")}
    cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 50000.0}
    m = exported_words(tmp_path, cfg, "plain")
    assert word_f(m, 22) == 50000.0 and word_i(m, 23) == 0 and word_f(m, 24) == 1.0
    assert word_i(m, 25) == 0
    # yarn without mscale keys: the HF remote defaults mscale 1, mscale_all_dim 0; betas 32 / 1
    cfg = dict(V2_CONFIG, rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                        "original_max_position_embeddings": 128})
    m = exported_words(tmp_path, cfg, "yarn")
    assert [word_f(m, k) for k in (24, 26, 27, 28, 29)] == [4.0, 32.0, 1.0, 1.0, 0.0]
    assert word_i(m, 23) == 1 and word_i(m, 25) == 128


def test_defaults_bos_missing_eos_list(tmp_path):
    cfg = {k: v for k, v in V2_CONFIG.items() if k not in ("bos_token_id", "topk_method")}
    cfg["eos_token_id"] = [9, 3]
    m = exported_words(tmp_path, cfg, "d")
    assert word_i(m, 32) == -1 and word_i(m, 33) == 9
    assert [word_i(m, k) for k in (14, 15, 16, 17, 18)] == [1, 1, 0, 0, 0]
    assert word_f(m, 19) == 1.0


def test_n_tokens_from_tokenizer_json(tmp_path):
    hf = tmp_path / "hf"
    make_checkpoint(hf, V2_CONFIG)
    tok = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 5, "c": 20}},
           "added_tokens": [{"id": 33, "content": "<eos>"}, {"id": 2, "content": "<x>"}]}
    (hf / "tokenizer.json").write_text(json.dumps(tok))
    ok_export(hf, tmp_path / "m.bin")
    assert word_i(read_model(tmp_path / "m.bin"), 35) == 34


def test_tokenizer_hook_appends_blob_and_hash(tmp_path, monkeypatch):
    hf = tmp_path / "hf"
    truth = make_checkpoint(hf, V2_CONFIG)
    blob = bytes(range(256)) * 3 + b"seek"
    monkeypatch.setattr(export, "tokenizer_blob", lambda d: blob)
    export.export_model(str(hf), str(tmp_path / "m.bin"), "f32")
    m = read_model(tmp_path / "m.bin")
    last = m["tensors"].pop()
    assert last["name"] == "tokenizer" and last["type"] == U8 and last["shape"] == (len(blob),)
    assert last["array"].tobytes() == blob
    h = 0xCBF29CE484222325
    for byte in blob:
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    assert word_u(m, 36) == h & 0xFFFFFFFF and word_u(m, 37) == h >> 32
    check_tensors(m, V2_CONFIG, truth, "f32")
    # published FNV-1a 64 test vectors
    assert export.fnv1a64(b"") == 0xCBF29CE484222325
    assert export.fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert export.fnv1a64(b"foobar") == 0x85944171F73967E8
    export.export_tokenizer(str(hf), str(tmp_path / "tok.bin"))
    assert (tmp_path / "tok.bin").read_bytes() == blob


def test_tied_embeddings_and_progress(tmp_path, monkeypatch, capsys):
    cfg = dict(V2_CONFIG, tie_word_embeddings=True)
    truth = make_checkpoint(tmp_path / "hf", cfg, drop=("lm_head.weight",))
    truth["lm_head.weight"] = truth["model.embed_tokens.weight"]
    monkeypatch.setattr(export, "PROGRESS_SECONDS", 0.0)
    export.export_model(str(tmp_path / "hf"), str(tmp_path / "m.bin"), "bf16")
    check_tensors(read_model(tmp_path / "m.bin"), cfg, truth, "bf16")
    err = capsys.readouterr().err
    assert "tensors," in err and "GB" in err and "wrote" in err


# ---------------------------------------------------------------------------------------------
# errors: non-zero exit, one line, no output file left behind


def break_config(hf, **changes):
    cfg = json.loads((hf / "config.json").read_text())
    cfg.update(changes)
    (hf / "config.json").write_text(json.dumps(cfg))


def rewrite_with(hf, lie=None, dtype_of=None, extra=None, replace=None):
    """Rewrite model.safetensors of the V2 checkpoint: lie in the header, change a dtype,
    add an extra tensor or replace some."""
    truth = make_checkpoint(hf, V2_CONFIG)
    entries = {}
    for name, (_, values) in truth.items():
        entries[name] = st_entry("F32", values)
    if extra:
        entries[extra] = st_entry("F32", np.zeros(4, dtype=np.float32))
    entries.update(replace or {})
    if dtype_of:
        name, dtype = dtype_of
        entries[name] = (dtype, entries[name][1], entries[name][2])
    write_safetensors(hf / "model.safetensors", entries, lie=lie)


def shift_offsets(header):
    name = "model.norm.weight"
    a, b = header[name]["data_offsets"]
    header[name]["data_offsets"] = [a + 10**6, b + 10**6]


def overlap_offsets(header):
    name = "model.norm.weight"
    a, b = header[name]["data_offsets"]
    header[name]["data_offsets"] = [a - 64, b - 64]


def case_no_config(hf):
    make_checkpoint(hf, V2_CONFIG)
    (hf / "config.json").unlink()


def case_truncated_data(hf):
    make_checkpoint(hf, V2_CONFIG)
    p = hf / "model.safetensors"
    os.truncate(p, os.path.getsize(p) - 100)


def case_truncated_header(hf):
    make_checkpoint(hf, V2_CONFIG)
    p = hf / "model.safetensors"
    os.truncate(p, 200)


def case_missing_shard(hf):
    make_checkpoint(hf, V2_CONFIG, n_shards=3)
    (hf / "model-00002-of-00003.safetensors").unlink()


def case_bad_json_header(hf):
    make_checkpoint(hf, V2_CONFIG)
    p = hf / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[8] = ord("#")
    p.write_bytes(bytes(data))


def wrong_shape_in_header(header):
    header["model.norm.weight"]["shape"] = [33]


def case_index_lies(hf):
    make_checkpoint(hf, V2_CONFIG, n_shards=2)
    index = json.loads((hf / "model.safetensors.index.json").read_text())
    wm = index["weight_map"]
    wm["model.norm.weight"] = next(f for f in set(wm.values()) if f != wm["model.norm.weight"])
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))


ERROR_CASES = {
    "no_config": (case_no_config, "config.json not found"),
    "unknown_model_type": (lambda hf: (make_checkpoint(hf, V2_CONFIG),
                                       break_config(hf, model_type="llama")), "model_type"),
    "missing_tensor": (lambda hf: make_checkpoint(
        hf, V2_CONFIG, drop=("model.layers.2.mlp.experts.1.up_proj.weight",)),
        "model.layers.2.mlp.experts.1.up_proj.weight"),
    "unsupported_dtype": (lambda hf: rewrite_with(hf, dtype_of=("model.norm.weight", "I32")),
                          "model.norm.weight"),
    "truncated_data": (case_truncated_data, "truncated"),
    "truncated_header": (case_truncated_header, "header"),
    "offsets_out_of_range": (lambda hf: rewrite_with(hf, lie=shift_offsets), "model.norm.weight"),
    "offsets_overlap": (lambda hf: rewrite_with(hf, lie=overlap_offsets), "overlap"),
    "bad_json_header": (case_bad_json_header, "JSON"),
    "size_disagrees_with_shape": (lambda hf: rewrite_with(hf, lie=wrong_shape_in_header),
                                  "model.norm.weight"),
    "index_lies": (case_index_lies, "model.norm.weight"),
    "fp8_without_scale": (lambda hf: rewrite_with(hf, replace={
        "model.layers.0.mlp.down_proj.weight": st_entry("F8_E4M3", np.ones((32, 28), np.uint8))}),
        "model.layers.0.mlp.down_proj.weight_scale_inv"),
    "missing_shard": (case_missing_shard, "model-00002-of-00003.safetensors"),
    "unknown_tensor": (lambda hf: rewrite_with(hf, extra="model.layers.1.self_attn.q_proj.bias"),
                       "model.layers.1.self_attn.q_proj.bias"),
    "wrong_shape": (lambda hf: (make_checkpoint(hf, V2_CONFIG),
                                break_config(hf, intermediate_size=30)), "shape"),
    "bad_rope_type": (lambda hf: (make_checkpoint(hf, V2_CONFIG),
                                  break_config(hf, rope_scaling={"type": "linear", "factor": 2})),
                      "linear"),
    "no_safetensors": (lambda hf: (make_checkpoint(hf, V2_CONFIG),
                                   (hf / "model.safetensors").unlink()), "model.safetensors"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_cases(tmp_path, case):
    make, words = ERROR_CASES[case]
    hf = tmp_path / "hf"
    make(hf)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = run_export(hf, out_dir / "model.bin")
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("export.py: error: "), p.stderr
    assert words in lines[0], lines[0]
    assert "Traceback" not in p.stderr
    assert os.listdir(out_dir) == [], "no output and no temporary file left"


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    """A failure after the temporary file exists (here: in the middle of the tensor data)."""
    hf = tmp_path / "hf"
    make_checkpoint(hf, V2_CONFIG)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    real = export.tensor_chunks
    calls = []

    def failing_chunks(t):
        calls.append(t.name)
        if len(calls) == 5:
            raise export.ExportError("disk on fire")
        return real(t)

    monkeypatch.setattr(export, "tensor_chunks", failing_chunks)
    with pytest.raises(export.ExportError):
        export.export_model(str(hf), str(out_dir / "model.bin"), "bf16")
    assert len(calls) == 5 and os.listdir(out_dir) == []


# ---------------------------------------------------------------------------------------------
# streaming: memory does not grow with the checkpoint


RSS_PROBE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)  # KiB on Linux
"""


def peak_rss_kib(*args) -> int:
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, sys.executable, EXPORT,
                          *map(str, args)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_streaming_memory_bound(tmp_path):
    """~200 MB of f32 weights (embed + lm_head 100 MB each): peak RSS of the exporter must stay
    well below even one of those tensors above the baseline of a tiny export."""
    small = dict(V2_CONFIG)
    big = dict(V2_CONFIG, hidden_size=256, vocab_size=100_000)
    make_checkpoint(tmp_path / "small", small)
    rng = np.random.default_rng(0)
    entries = {}
    for name, shape in canonical(big):
        x = (rng.standard_normal(shape[-1]).astype(np.float32) if len(shape) == 1
             else np.broadcast_to(rng.standard_normal(shape[-1]).astype(np.float32), shape))
        entries[name] = ("F32", list(shape), np.ascontiguousarray(x).tobytes())
        del x
    os.makedirs(tmp_path / "big")
    (tmp_path / "big" / "config.json").write_text(json.dumps(big))
    write_safetensors(tmp_path / "big" / "model.safetensors", entries)
    del entries
    size = os.path.getsize(tmp_path / "big" / "model.safetensors")
    assert size > 200e6
    base = peak_rss_kib(tmp_path / "small", tmp_path / "small.bin", "--dtype", "bf16")
    peak = peak_rss_kib(tmp_path / "big", tmp_path / "big.bin", "--dtype", "bf16")
    growth_mb = (peak - base) / 1024
    assert growth_mb < 60, f"exporter RSS grew by {growth_mb:.0f} MB on a {size / 1e6:.0f} MB model"
    m = read_model(tmp_path / "big.bin")
    assert m["tensors"][0]["shape"] == (100_000, 256)


# ---------------------------------------------------------------------------------------------
# hostile input, round two: whatever the input, export.py exits 0 with a file run.c loads, or 1
# with one line "export.py: error: ..." and no file; never a traceback, a hang or a lost file.


def export_cli(*args) -> tuple:
    """export.py's main() in this process, with sys.argv as its command line (so an older
    export.py without an argv parameter runs too): (exit status, stderr). Any exception other
    than SystemExit escapes to the test: that is a traceback the user would have seen."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    argv, sys.argv = sys.argv, ["export.py", *map(str, args)]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            export.main()
        code = 0
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv = argv
        for s, h in handlers.items():
            signal.signal(s, h)
    return code, err.getvalue()


def assert_one_error(code, stderr: str, *words) -> str:
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("export.py: error: "), stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def base_v3(tmp_path_factory):
    """The V3-style checkpoint of this file, written once; cases link to its safetensors."""
    hf = tmp_path_factory.mktemp("base") / "v3"
    make_checkpoint(hf, V3_CONFIG)
    return hf


def case_dir(tmp_path, base, config: dict, name: str = "hf"):
    """A checkpoint directory with its own config.json and a link to base's model.safetensors."""
    hf = tmp_path / name
    hf.mkdir()
    (hf / "model.safetensors").symlink_to(base / "model.safetensors")
    (hf / "config.json").write_text(json.dumps(config, allow_nan=True))
    return hf


def bad_config_export(tmp_path, base, config: dict, *words):
    """Export with this config.json: one error line naming `words`, no file left."""
    hf = case_dir(tmp_path, base, config, f"hf{len(list(tmp_path.iterdir()))}")
    out_dir = hf.parent / (hf.name + "-out")
    out_dir.mkdir()
    code, err = export_cli(hf, out_dir / "m.bin")
    line = assert_one_error(code, err, *words)
    assert os.listdir(out_dir) == [], "no output and no temporary file left"
    return line


# Every config.json field export.py reads, with values of the wrong JSON type, numbers that do not
# fit the file's int32 / float32, and non-finite floats (json.dumps writes NaN and Infinity as
# Python's json module reads them).
INT_FIELDS = ["hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads", "q_lora_rank",
              "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
              "intermediate_size", "moe_intermediate_size", "n_routed_experts", "n_shared_experts",
              "num_experts_per_tok", "n_group", "topk_group", "first_k_dense_replace",
              "moe_layer_freq", "max_position_embeddings", "bos_token_id", "eos_token_id"]
FLOAT_FIELDS = ["routed_scaling_factor", "rope_theta", "rms_norm_eps"]
CHOICE_FIELDS = ["model_type", "topk_method", "scoring_func"]
BOOL_FIELDS = ["norm_topk_prob", "tie_word_embeddings"]
ROPE_INT_FIELDS = ["original_max_position_embeddings"]
ROPE_FLOAT_FIELDS = ["factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"]
BAD_INTS = ["12", [12, "x"], {"v": 12}, 1.5, True, 2**31, -2**31 - 1, 2**40, 1e39, float("inf"),
            float("-inf"), float("nan")]
BAD_FLOATS = ["1e-6", [1.0, "x"], {"v": 1}, True, 1e39, -1e39, 10**40, float("inf"),
              float("-inf"), float("nan")]
BAD_CHOICES = [["noaux_tc"], {"noaux_tc": 1}, 5, True, "\ud800"]
BAD_BOOLS = ["true", 1, [], {"a": True}]


@pytest.mark.parametrize("field", INT_FIELDS + FLOAT_FIELDS + CHOICE_FIELDS + BOOL_FIELDS)
def test_config_field_of_wrong_type_or_size(tmp_path, base_v3, field):
    bad = (BAD_INTS if field in INT_FIELDS else BAD_FLOATS if field in FLOAT_FIELDS
           else BAD_CHOICES if field in CHOICE_FIELDS else BAD_BOOLS)
    for value in bad:
        bad_config_export(tmp_path, base_v3, dict(V3_CONFIG, **{field: value}),
                          "config.json", field if field != "model_type" or value != "\ud800" else "model_type")


@pytest.mark.parametrize("field", ROPE_INT_FIELDS + ROPE_FLOAT_FIELDS)
@pytest.mark.parametrize("spelling", ["rope_scaling", "rope_parameters"])
def test_yarn_field_of_wrong_type_or_size(tmp_path, base_v3, field, spelling):
    rope = dict(V3_CONFIG["rope_scaling"], type="yarn")
    base = {k: v for k, v in V3_CONFIG.items() if k != "rope_scaling"}
    for value in BAD_INTS if field in ROPE_INT_FIELDS else BAD_FLOATS:
        cfg = dict(base, **{spelling: dict(rope, **{field: value})})
        bad_config_export(tmp_path, base_v3, cfg, "config.json", f"{spelling}.{field}")


def test_rope_and_token_id_containers_of_wrong_type(tmp_path, base_v3):
    for value in ([], "yarn", 5, True):
        bad_config_export(tmp_path, base_v3, dict(V3_CONFIG, rope_scaling=value), "rope_scaling")
        bad_config_export(tmp_path, base_v3, dict(V3_CONFIG, rope_parameters=value), "rope_parameters")
    for value in ([1, 2], 5, "linear"):
        rope = dict(V3_CONFIG["rope_scaling"], type=value)
        bad_config_export(tmp_path, base_v3, dict(V3_CONFIG, rope_scaling=rope), "rope scaling type")
    for key in ("bos_token_id", "eos_token_id"):
        for value in (["0"], [[0]], [True], [0.5], [2**31]):
            bad_config_export(tmp_path, base_v3, dict(V3_CONFIG, **{key: value}), key)


# What run.c's validate_config rejects fails at export, with the config.json field named (limits
# copied from run.c: dims <= 2^24, layers, heads, experts <= 65536, rope_theta in 1.0001..1e30,
# rms_norm_eps in 1e-30..1, YaRN factor and betas in 1e-6..1e6, mscales in -1e3..1e3, ids < vocab).
RUN_C_REJECTS = [
    (dict(rope_theta=-10000.0), "rope_theta"), (dict(rope_theta=0), "rope_theta"),
    (dict(rope_theta=1.0), "rope_theta"), (dict(rope_theta=1e31), "rope_theta"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"), (dict(rms_norm_eps=-1e-6), "rms_norm_eps"),
    (dict(rms_norm_eps=1e-50), "rms_norm_eps"), (dict(rms_norm_eps=2.0), "rms_norm_eps"),
    (dict(rope_scaling=dict(V3_CONFIG["rope_scaling"], factor=-40)), "rope_scaling.factor"),
    (dict(rope_scaling=dict(V3_CONFIG["rope_scaling"], factor=0)), "rope_scaling.factor"),
    (dict(rope_scaling=dict(V3_CONFIG["rope_scaling"], factor=1e7)), "rope_scaling.factor"),
    (dict(rope_scaling=dict(V3_CONFIG["rope_scaling"], beta_fast=0)), "rope_scaling.beta_fast"),
    (dict(rope_scaling=dict(V3_CONFIG["rope_scaling"], beta_slow=-1)), "rope_scaling.beta_slow"),
    (dict(rope_scaling=dict(V3_CONFIG["rope_scaling"], mscale=1e4)), "rope_scaling.mscale"),
    (dict(rope_scaling=dict(V3_CONFIG["rope_scaling"], mscale_all_dim=-2e3)), "rope_scaling.mscale_all_dim"),
    (dict(rope_scaling=dict(V3_CONFIG["rope_scaling"], original_max_position_embeddings=0)),
     "rope_scaling.original_max_position_embeddings"),
    (dict(routed_scaling_factor=-1.0), "routed_scaling_factor"),
    (dict(routed_scaling_factor=2e6), "routed_scaling_factor"),
    (dict(bos_token_id=50), "bos_token_id"), (dict(bos_token_id=-2), "bos_token_id"),
    (dict(eos_token_id=[50, 1]), "eos_token_id"), (dict(eos_token_id=-7), "eos_token_id"),
    (dict(qk_rope_head_dim=7), "qk_rope_head_dim"), (dict(qk_rope_head_dim=0), "qk_rope_head_dim"),
    (dict(hidden_size=2**24 + 1), "hidden_size"), (dict(vocab_size=0), "vocab_size"),
    (dict(num_attention_heads=2**16 + 1), "num_attention_heads"),
    (dict(qk_nope_head_dim=2**16 + 1), "qk_nope_head_dim"),
    (dict(n_routed_experts=2**16 + 1), "n_routed_experts"),
    (dict(n_shared_experts=1025), "n_shared_experts"),
    (dict(num_experts_per_tok=5), "num_experts_per_tok"), (dict(num_experts_per_tok=0), "num_experts_per_tok"),
    (dict(n_group=3), "n_group"), (dict(topk_group=3), "topk_group"),
    (dict(moe_intermediate_size=0), "moe_intermediate_size"),
    (dict(n_group=4, topk_group=1, num_experts_per_tok=2), "num_experts_per_tok"),
    (dict(num_attention_heads=2**12, qk_nope_head_dim=2**12), "attention shapes"),
    (dict(moe_layer_freq=0), "moe_layer_freq"), (dict(first_k_dense_replace=-1), "first_k_dense_replace"),
    (dict(max_position_embeddings=0), "max_position_embeddings"),
]


def test_config_values_run_c_rejects(tmp_path, base_v3):
    for changes, field in RUN_C_REJECTS:
        bad_config_export(tmp_path, base_v3, dict(V3_CONFIG, **changes), "config.json", field)


def test_numbers_run_c_ignores_still_fit_the_format(tmp_path):
    """A dense model: run.c never looks at the router's words, but they must still fit the file's
    float32 / int32 (packing 1e39 as a float32 is an OverflowError in Python)."""
    dense = dict(V2_CONFIG, n_routed_experts=0)
    make_checkpoint(tmp_path / "base", dense)
    for value in (1e39, -1e39, 10**40, 3.5e38):
        bad_config_export(tmp_path, tmp_path / "base", dict(dense, routed_scaling_factor=value),
                          "routed_scaling_factor", "float32")
    for value in (2**31, -2**31 - 1, 2**40):
        bad_config_export(tmp_path, tmp_path / "base", dict(dense, topk_group=value), "topk_group", "int32")
    hf = case_dir(tmp_path, tmp_path / "base", dict(dense, routed_scaling_factor=3.4e38, topk_group=2**31 - 1))
    code, err = export_cli(hf, tmp_path / "ok.bin")
    assert code == 0, err
    m = read_model(tmp_path / "ok.bin")
    assert word_f(m, 19) == np.float32(3.4e38) and word_i(m, 15) == 2**31 - 1


def test_boundary_values_accepted_by_export_load_in_run_c(tmp_path, base_v3, run_bin):
    """The other side of the limits: values at the edge export and load (run.c is the judge)."""
    rope = dict(V3_CONFIG["rope_scaling"], factor=1e6, beta_fast=1e-6, beta_slow=1e6, mscale=-1e3,
                mscale_all_dim=1e3, original_max_position_embeddings=2**31 - 1)
    edges = [dict(rope_theta=1.0002, rms_norm_eps=1.0), dict(rope_theta=1e30, rms_norm_eps=1e-30),
             dict(rope_scaling=rope, bos_token_id=49, eos_token_id=-1, routed_scaling_factor=0.0),
             dict(max_position_embeddings=2**31 - 1, bos_token_id=None, eos_token_id=[49])]
    for k, changes in enumerate(edges):
        hf = case_dir(tmp_path, base_v3, dict(V3_CONFIG, **changes), f"edge{k}")
        code, err = export_cli(hf, tmp_path / f"edge{k}.bin")
        assert code == 0, err
        p = subprocess.run([run_bin, tmp_path / f"edge{k}.bin", "--encode"], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=60)
        assert b"has no embedded tokenizer" in p.stderr, p.stderr  # it got past the config checks


TIMED_EXPORT = """
import importlib.util, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a runaway list fails, not the machine
spec = importlib.util.spec_from_file_location("export", sys.argv[1])
export = importlib.util.module_from_spec(spec)
sys.modules["export"] = export
spec.loader.exec_module(export)
sys.argv = ["export.py"] + sys.argv[2:]
start = time.monotonic()
try:
    export.main()
finally:
    print(f"{time.monotonic() - start:.3f}")
"""


@pytest.mark.parametrize("changes, field", [
    (dict(num_hidden_layers=10**6), "num_hidden_layers"),
    (dict(num_hidden_layers=2**31 - 1), "num_hidden_layers"),
    (dict(n_routed_experts=2**31 - 1), "n_routed_experts"),
    (dict(num_hidden_layers=2**16, first_k_dense_replace=0, n_routed_experts=2**16, n_group=1,
          topk_group=1), "num_hidden_layers 65536"),  # within run.c's limits, not the checkpoint's
    (dict(num_hidden_layers=2**16, first_k_dense_replace=2**16, intermediate_size=2**24), "tensors"),
], ids=["layers-1e6", "layers-2^31-1", "experts-2^31-1", "65536x65536", "65536-dense"])
def test_huge_counts_fail_fast(tmp_path, base_v3, changes, field):
    """Sizes are checked before any per-layer list is built: well under a second, bounded memory."""
    hf = case_dir(tmp_path, base_v3, dict(V3_CONFIG, **changes))
    try:
        p = subprocess.run([sys.executable, "-c", TIMED_EXPORT, EXPORT, hf, tmp_path / "m.bin"],
                           capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("export.py ran for a minute")
    assert_one_error(p.returncode, p.stderr, field)
    assert float(p.stdout) < 0.5, f"{p.stdout.strip()} s"
    assert not (tmp_path / "m.bin").exists()


def test_deep_json_everywhere(tmp_path, base_v3):
    """Nesting past Python's recursion limit: config.json, the index, a safetensors header,
    tokenizer.json and tokenizer_config.json."""
    deep = "[" * 100000 + "]" * 100000
    hf = case_dir(tmp_path, base_v3, V3_CONFIG, "config")
    for text in (deep, '{"model_type": ' + deep + "}", '{"rope_scaling": {"factor": ' + deep + "}}"):
        (hf / "config.json").write_text(text)
        assert_one_error(*export_cli(hf, tmp_path / "m.bin"), "config.json", "nested too deeply")
    hf = tmp_path / "header"
    make_checkpoint(hf, V2_CONFIG)
    for lie in (lambda h: h.update(__metadata__=json.loads("[" * 500 + "]" * 500)),
                lambda h: h.update({"model.norm.weight": "@DEEP@"})):
        rewrite_with(hf, lie=lie)
        st = hf / "model.safetensors"
        data = st.read_bytes()
        (n,) = struct.unpack_from("<Q", data)
        header = data[8:8 + n].replace(b'"@DEEP@"', deep.encode())
        header = header.replace(b"[" * 500 + b"]" * 500, deep.encode())
        header += b" " * (-len(header) % 8)
        body = data[8 + n:]
        st.write_bytes(struct.pack("<Q", len(header)) + header + body)
        assert_one_error(*export_cli(hf, tmp_path / "m.bin"), "safetensors header", "nested too deeply")
    hf = tmp_path / "index"
    make_checkpoint(hf, V2_CONFIG, n_shards=2)
    (hf / "model.safetensors.index.json").write_text('{"weight_map": ' + deep + "}")
    assert_one_error(*export_cli(hf, tmp_path / "m.bin"), "index.json", "nested too deeply")
    hf = tokenizer_checkpoint(tmp_path / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        saved = (hf / name).read_text(encoding="utf-8")
        (hf / name).write_text('{"added_tokens": ' + deep + "}")
        assert_one_error(*export_cli(hf, tmp_path / "m.bin"), name, "nested too deeply")
        assert_one_error(*export_cli("--tokenizer", hf, tmp_path / "t.bin"), name, "nested too deeply")
        (hf / name).write_text(saved, encoding="utf-8")
    assert not (tmp_path / "m.bin").exists() and not (tmp_path / "t.bin").exists()


def test_weight_map_values_that_are_not_file_names(tmp_path):
    hf = tmp_path / "hf"
    make_checkpoint(hf, V2_CONFIG, n_shards=2)
    index_path = hf / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    for value in ([1], 5, None, {"a": 1}, True, "", "../model-00001-of-00002.safetensors", "a/b",
                  "model\u0000.safetensors"):
        wm = dict(index["weight_map"], **{"model.norm.weight": value})
        index_path.write_text(json.dumps({"weight_map": wm}))
        assert_one_error(*export_cli(hf, tmp_path / "m.bin"), "weight_map", "model.norm.weight")
    assert not (tmp_path / "m.bin").exists()


# ---------------------------------------------------------------------------------------------
# tokenizer files: malformed = an error (exit 1); well-formed but not what run.c implements = a
# warning, and the model exports without a tokenizer (README, "Export and run a real model")


TOKENIZER_CONFIG = dict(V2_CONFIG, vocab_size=320, bos_token_id=0, eos_token_id=1)


def tokenizer_checkpoint(hf, merges: int = 60):
    """The V2-shaped model of this file with the miniature V3-style tokenizer of
    tests/gen_checkpoints.py (3 specials + 256 bytes + `merges` merges = 319 ids < 320)."""
    make_checkpoint(hf, TOKENIZER_CONFIG)
    gen_checkpoints.write_tokenizer(str(hf), merges)
    return hf


@pytest.fixture(scope="module")
def tok_base(tmp_path_factory):
    hf = tokenizer_checkpoint(tmp_path_factory.mktemp("tokbase") / "hf")
    out = hf.parent / "ok.bin"
    code, err = export_cli(hf, out)
    assert code == 0 and "warning" not in err, err
    assert read_model(out)["tensors"][-1]["name"] == "tokenizer"  # the intact base embeds one
    return hf


class Root:
    """What an edit returns to replace the whole document (other edits change it in place)."""

    def __init__(self, value):
        self.value = value


def tokenizer_case(tmp_path, base, edit, name="tokenizer.json"):
    """A copy of the base checkpoint (safetensors linked) with `edit` applied to a tokenizer file's
    JSON."""
    hf = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
    hf.mkdir()
    for f in os.listdir(base):
        if f == "model.safetensors":
            (hf / f).symlink_to(base / f)
        else:
            shutil.copy(base / f, hf / f)
    doc = json.loads((hf / name).read_text(encoding="utf-8"))
    new = edit(doc)
    (hf / name).write_text(json.dumps(new.value if isinstance(new, Root) else doc, allow_nan=True),
                           encoding="utf-8")
    return hf


def stage(doc, k):
    return doc["pre_tokenizer"]["pretokenizers"][k]


MALFORMED_TOKENIZER_JSON = {
    "added_tokens-number": lambda d: d.update(added_tokens=5),
    "added_tokens-string": lambda d: d.update(added_tokens="<s>"),
    "added_token-number": lambda d: d["added_tokens"].append(7),
    "added_token-content-number": lambda d: d["added_tokens"][0].update(content=5),
    "added_token-content-empty": lambda d: d["added_tokens"][1].update(content=""),
    "added_token-id-string": lambda d: d["added_tokens"][0].update(id="0"),
    "added_token-id-negative": lambda d: d["added_tokens"][0].update(id=-1),
    "added_token-id-huge": lambda d: d["added_tokens"][2].update(id=2**24),
    "added_token-id-twice": lambda d: d["added_tokens"][1].update(id=0),
    "added_token-content-twice": lambda d: d["added_tokens"][1].update(content=d["added_tokens"][0]["content"]),
    "added_token-on-a-vocab-id": lambda d: d["added_tokens"][2].update(id=100),
    "added_token-special-string": lambda d: d["added_tokens"][0].update(special="yes"),
    "normalizer-string": lambda d: d.update(normalizer="NFC"),
    "normalizer-number": lambda d: d.update(normalizer=5),
    "normalizer-type-list": lambda d: d.update(normalizer={"type": ["Sequence"]}),
    "normalizers-string": lambda d: d.update(normalizer={"type": "Sequence", "normalizers": "x"}),
    "model-list": lambda d: d.update(model=[d["model"]]),
    "model-string": lambda d: d.update(model="BPE"),
    "model-missing": lambda d: d.pop("model"),
    "model-type-number": lambda d: d["model"].update(type=5),
    "vocab-list-for-BPE": lambda d: d["model"].update(vocab=list(d["model"]["vocab"])),
    "vocab-string": lambda d: d["model"].update(vocab="a b c"),
    "vocab-id-string": lambda d: d["model"]["vocab"].update(a="64"),
    "vocab-id-bool": lambda d: d["model"]["vocab"].update(a=True),
    "vocab-id-float": lambda d: d["model"]["vocab"].update(a=64.5),
    "vocab-id-negative": lambda d: d["model"]["vocab"].update(a=-3),
    "vocab-id-huge": lambda d: d["model"]["vocab"].update(a=2**24),
    "vocab-duplicate-id": lambda d: d["model"]["vocab"].update(a=d["model"]["vocab"]["b"]),
    "vocab-empty-token": lambda d: d["model"]["vocab"].update({"": 318}),
    "merges-nested-lists": lambda d: d["model"]["merges"].__setitem__(0, [["t"], ["h"]]),
    "merges-ints": lambda d: d["model"]["merges"].__setitem__(0, [1, 2]),
    "merges-int": lambda d: d["model"]["merges"].__setitem__(3, 7),
    "merges-three-parts": lambda d: d["model"]["merges"].__setitem__(3, "a b c"),
    "merges-one-part": lambda d: d["model"]["merges"].__setitem__(3, ["ab"]),
    "merges-string": lambda d: d["model"].update(merges="t h"),
    "merges-unknown-token": lambda d: d["model"]["merges"].append("zq zr"),
    "merges-result-not-in-vocab": lambda d: d["model"]["merges"].append("Q Z"),
    "byte_fallback-string": lambda d: d["model"].update(byte_fallback="no"),
    "dropout-string": lambda d: d["model"].update(dropout="0.1"),
    "pre_tokenizer-string": lambda d: d.update(pre_tokenizer="Sequence"),
    "pretokenizers-number": lambda d: d["pre_tokenizer"].update(pretokenizers=5),
    "stage-number": lambda d: d["pre_tokenizer"]["pretokenizers"].__setitem__(1, 5),
    "stage-type-number": lambda d: stage(d, 1).update(type=5),
    "split-pattern-bare-string": lambda d: stage(d, 0).update(pattern="\\p{N}{1,3}"),
    "split-pattern-number": lambda d: stage(d, 0).update(pattern={"Regex": 5}),
    "split-pattern-two-keys": lambda d: stage(d, 0).update(pattern={"Regex": "a", "String": "b"}),
    "split-behavior-number": lambda d: stage(d, 0).update(behavior=1),
    "split-invert-string": lambda d: stage(d, 0).update(invert="false"),
    "regex-bad-u-escape": lambda d: stage(d, 1).update(pattern={"Regex": "[\\u4e00-\\u9fzz]+"}),
    "regex-short-u-escape": lambda d: stage(d, 1).update(pattern={"Regex": "[\\u4e0]+"}),
    "regex-U-beyond-unicode": lambda d: stage(d, 1).update(pattern={"Regex": "[\\U00110000]+"}),
    "regex-trailing-backslash": lambda d: stage(d, 0).update(pattern={"Regex": "\\p{N}{1,3}\\"}),
    "bytelevel-flag-string": lambda d: stage(d, 3).update(use_regex="false"),
    "surrogate-in-vocab": lambda d: d["model"]["vocab"].update({"a\udc00": 318}),
    "surrogate-in-added": lambda d: d["added_tokens"][2].update(content="<\ud800>"),
    "surrogate-in-merge": lambda d: d["model"]["merges"].append("\ud83d a"),
    "surrogate-in-regex": lambda d: stage(d, 0).update(pattern={"Regex": "\udfff"}),
    "root-list": lambda d: Root([d]),
}


@pytest.mark.parametrize("case", list(MALFORMED_TOKENIZER_JSON))
def test_malformed_tokenizer_json_is_an_error(tmp_path, tok_base, case):
    hf = tokenizer_case(tmp_path, tok_base, MALFORMED_TOKENIZER_JSON[case])
    line = assert_one_error(*export_cli(hf, tmp_path / "m.bin"), "tokenizer.json")
    assert "warning" not in line and not (tmp_path / "m.bin").exists()
    assert_one_error(*export_cli("--tokenizer", hf, tmp_path / "t.bin"), "tokenizer.json")
    assert not (tmp_path / "t.bin").exists()


MALFORMED_TOKENIZER_CONFIG = {
    "bos_token-number": lambda d: d.update(bos_token=0),
    "bos_token-list": lambda d: d.update(bos_token=["<s>"]),
    "bos_token-content-number": lambda d: d.update(bos_token={"content": 0}),
    "eos_token-empty-object": lambda d: d.update(eos_token={}),
    "add_bos_token-string": lambda d: d.update(add_bos_token="true"),
    "chat_template-number": lambda d: d.update(chat_template=5),
    "chat_template-object": lambda d: d.update(chat_template={"default": "x"}),
    "chat_template-list-of-numbers": lambda d: d.update(chat_template=[5]),
    "chat_template-list-name-number": lambda d: d.update(chat_template=[{"name": 5, "template": "x"}]),
    "chat_template-surrogate": lambda d: d.update(chat_template="{{ '\ud800' }}"),
    "bos_token-surrogate": lambda d: d.update(bos_token="\udbff"),
    "root-string": lambda d: Root("tokenizer"),
}


@pytest.mark.parametrize("case", list(MALFORMED_TOKENIZER_CONFIG))
def test_malformed_tokenizer_config_is_an_error(tmp_path, tok_base, case):
    hf = tokenizer_case(tmp_path, tok_base, MALFORMED_TOKENIZER_CONFIG[case], "tokenizer_config.json")
    assert_one_error(*export_cli(hf, tmp_path / "m.bin"), "tokenizer_config.json")
    assert_one_error(*export_cli("--tokenizer", hf, tmp_path / "t.bin"), "tokenizer_config.json")
    assert os.listdir(tmp_path) == [hf.name]


def test_chat_template_jinja_not_utf8(tmp_path, tok_base):
    hf = tokenizer_case(tmp_path, tok_base, lambda d: d.pop("chat_template", None), "tokenizer_config.json")
    (hf / "chat_template.jinja").write_bytes(b"{{ bos_token }}\xed\xa0\x80")  # a UTF-8-encoded surrogate
    assert_one_error(*export_cli(hf, tmp_path / "m.bin"), "chat_template.jinja", "UTF-8")


UNSUPPORTED_TOKENIZERS = {
    "bytelevel-only": lambda d: d.update(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False}),
    "no-pre_tokenizer": lambda d: d.update(pre_tokenizer=None),
    "string-pattern": lambda d: stage(d, 0).update(pattern={"String": " "}),
    "nfc-normalizer": lambda d: d.update(normalizer={"type": "NFC"}),
    "lstrip": lambda d: d["added_tokens"][0].update(lstrip=True),
    "wordpiece": lambda d: d["model"].update(type="WordPiece"),
    "byte_fallback": lambda d: d["model"].update(byte_fallback=True),
    "missing-byte": lambda d: d["model"]["vocab"].pop("\u0101"),  # byte 0x01, in no merge
}


@pytest.mark.parametrize("case", list(UNSUPPORTED_TOKENIZERS))
def test_unsupported_tokenizer_exports_without_one(tmp_path, tok_base, case):
    """Well-formed, but not what run.c reproduces: a warning, the model without a tokenizer."""
    edit = UNSUPPORTED_TOKENIZERS[case]
    hf = tokenizer_case(tmp_path, tok_base, edit)
    code, err = export_cli(hf, tmp_path / "m.bin")
    assert code == 0 and "export.py: warning: tokenizer not supported" in err, err
    m = read_model(tmp_path / "m.bin")
    assert m["tensors"][-1]["name"] == "lm_head.weight" and word_u(m, 36) == word_u(m, 37) == 0
    assert word_i(m, 35) == 319  # n_tokens still comes from tokenizer.json
    code, err = export_cli("--tokenizer", hf, tmp_path / "t.bin")
    assert code == 1 and not (tmp_path / "t.bin").exists()


def test_tokenizer_larger_than_the_embedding_is_an_error(tmp_path):
    hf = tmp_path / "hf"
    make_checkpoint(hf, dict(TOKENIZER_CONFIG, vocab_size=300))
    gen_checkpoints.write_tokenizer(str(hf), 60)  # 319 ids
    assert_one_error(*export_cli(hf, tmp_path / "m.bin"), "vocab_size")


# ---------------------------------------------------------------------------------------------
# input files that are not regular files: refused at once, never read (a FIFO would block)


def no_memory_runaway():
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def export_subprocess(*args, timeout=30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, EXPORT, *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, preexec_fn=no_memory_runaway)
    except subprocess.TimeoutExpired:
        pytest.fail(f"export.py {' '.join(map(str, args))} did not finish in {timeout} s")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "shard", "index",
                                  "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"])
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "directory"])
def test_non_regular_input_is_refused(tmp_path, name, kind):
    hf = tmp_path / "hf"
    if name in ("shard", "index"):
        make_checkpoint(hf, V2_CONFIG, n_shards=2)
        name = "model-00002-of-00002.safetensors" if name == "shard" else "model.safetensors.index.json"
    else:
        tokenizer_checkpoint(hf)
    path = hf / name
    if path.exists():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    for args in ([hf, tmp_path / "m.bin"], ["--tokenizer", hf, tmp_path / "t.bin"]):
        if args[0] == "--tokenizer" and name not in ("tokenizer.json", "tokenizer_config.json",
                                                       "chat_template.jinja"):
            continue
        p = export_subprocess(*args, timeout=20)
        assert_one_error(p.returncode, p.stderr, name, "not a regular file")
    assert sorted(os.listdir(tmp_path)) == ["hf"]


# ---------------------------------------------------------------------------------------------
# the output: never an input, never something that is not a regular file


def test_output_that_is_an_input_is_refused(tmp_path):
    hf = tokenizer_checkpoint(tmp_path / "hf")
    sharded = tmp_path / "sharded"
    make_checkpoint(sharded, V2_CONFIG, n_shards=2)
    (tmp_path / "link").symlink_to(hf / "model.safetensors")
    os.link(hf / "config.json", tmp_path / "hardlink")
    outs = [(hf, hf / "config.json"), (hf, hf / "model.safetensors"), (hf, hf / "tokenizer.json"),
            (hf, hf / "tokenizer_config.json"), (hf, tmp_path / "link"), (hf, tmp_path / "hardlink"),
            (hf, hf / ".." / "hf" / "config.json"), (sharded, sharded / "model-00001-of-00002.safetensors"),
            (sharded, sharded / "model.safetensors.index.json")]
    before = {p: p.read_bytes() for p in list(hf.iterdir()) + list(sharded.iterdir())}
    for src, out in outs:
        assert_one_error(*export_cli(src, out), "is the input file")
    os.link(hf / "tokenizer.json", tmp_path / "tok-link")
    for out in (hf / "tokenizer.json", tmp_path / "tok-link", hf / "tokenizer_config.json"):
        assert_one_error(*export_cli("--tokenizer", hf, out), "is the input file")
    assert {p: p.read_bytes() for p in before} == before, "no input changed"
    assert (tmp_path / "link").is_symlink()


def test_output_that_is_not_a_regular_file_is_left_alone(tmp_path):
    hf = tmp_path / "hf"
    make_checkpoint(hf, V2_CONFIG)
    fifo, null, dangling = tmp_path / "fifo", tmp_path / "null", tmp_path / "dangling"
    os.mkfifo(fifo)
    null.symlink_to("/dev/null")
    tok = tokenizer_checkpoint(tmp_path / "tok")
    for out in (fifo, null, "/dev/null"):
        for args in ([hf, out], ["--tokenizer", tok, out]):
            p = export_subprocess(*args, timeout=20)
            assert_one_error(p.returncode, p.stderr, "not a regular file")
    assert fifo.is_fifo() and null.is_symlink() and os.readlink(null) == "/dev/null"
    assert sorted(os.listdir(tmp_path)) == ["fifo", "hf", "null", "tok"]
    dangling.symlink_to(tmp_path / "nowhere")  # a dangling link is replaced, as any name would be
    code, err = export_cli(hf, dangling)
    assert code == 0, err
    assert dangling.is_file() and not dangling.is_symlink()


# ---------------------------------------------------------------------------------------------
# signals and a full disk: the temporary file goes, the message names the file


SLOW_EXPORT = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("export", sys.argv[1])
export = importlib.util.module_from_spec(spec)
sys.modules["export"] = export
spec.loader.exec_module(export)
real = export.tensor_chunks
def slow_chunks(t):  # the third tensor takes a minute: the temporary file exists by then
    if t.name == "model.layers.0.self_attn.q_proj.weight":
        sys.stderr.write("writing\\n"); sys.stderr.flush()
        time.sleep(60)
    return real(t)
export.tensor_chunks = slow_chunks
sys.argv = ["export.py"] + sys.argv[2:]
export.main()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_removes_the_temporary_file(tmp_path, signum):
    hf = tmp_path / "hf"
    make_checkpoint(hf, V2_CONFIG)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "m.bin").write_bytes(b"previous")
    p = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, EXPORT, hf, out_dir / "m.bin"],
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stderr.readline() == "writing\n"
        assert len(os.listdir(out_dir)) == 2, "the temporary file exists"
        p.send_signal(signum)
        err = p.communicate(timeout=30)[1]
    finally:
        p.kill()
    assert p.returncode in (-signum, 128 + signum), (p.returncode, err)
    assert "Traceback" not in err, err
    assert os.listdir(out_dir) == ["m.bin"] and (out_dir / "m.bin").read_bytes() == b"previous"


def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_file_size_limit_names_the_file(tmp_path):
    """A real write error from the kernel (EFBIG under RLIMIT_FSIZE; Python ignores SIGXFSZ)."""
    hf = tmp_path / "hf"
    make_checkpoint(hf, dict(V2_CONFIG, vocab_size=1000))  # ~300 KB as f32
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "m.bin").write_bytes(b"previous")
    p = subprocess.run([sys.executable, EXPORT, hf, out_dir / "m.bin"], capture_output=True,
                       text=True, timeout=60, preexec_fn=limit_file_size)
    assert_one_error(p.returncode, p.stderr, str(out_dir / "m.bin"), "File too large")
    assert os.listdir(out_dir) == ["m.bin"] and (out_dir / "m.bin").read_bytes() == b"previous"


def test_full_disk_names_the_file_in_process(tmp_path, monkeypatch):
    """ENOSPC from the final fsync, as a full disk with delayed allocation reports it."""
    hf = tmp_path / "hf"
    make_checkpoint(hf, V2_CONFIG)
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    assert_one_error(*export_cli(hf, out_dir / "m.bin"), str(out_dir / "m.bin"), "No space left on device")
    assert os.listdir(out_dir) == []


TMPFS_EXPORT = """
mount -t tmpfs -o size=128k tmpfs "$1" || exit 77
"$2" "$3" "$4" "$1/m.bin"
echo "rc=$?"
ls -A "$1"
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="no unshare(1)")
def test_full_tmpfs_names_the_file(tmp_path):
    """A real ENOSPC: a 128 KB tmpfs mounted in a private mount namespace (unshare -rm: root or
    user namespaces needed; skipped where neither is allowed)."""
    hf = tmp_path / "hf"
    make_checkpoint(hf, dict(V2_CONFIG, vocab_size=1000))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = subprocess.run(["unshare", "-rm", "sh", "-c", TMPFS_EXPORT, "sh", mnt, sys.executable, EXPORT, hf],
                       capture_output=True, text=True, timeout=60)
    if p.returncode == 77 or "unshare:" in p.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    assert_one_error(1 if "rc=1" in p.stdout else 0, p.stderr, f"{mnt}/m.bin", "No space left on device")
    assert p.stdout.split() == ["rc=1"], "nothing left on the tmpfs"


def test_output_is_written_in_whole_2mb_pieces():
    """export.py hands the file 2 MB pieces at 2 MB offsets (so Linux caches it in 2 MB folios, which run.c maps
    with 2 MB pages), whatever sizes the tensors come in; the bytes are the ones given, in order."""
    sizes = []

    class Recorder(io.BytesIO):
        def write(self, b):
            sizes.append(len(b))
            return super().write(b)

    f = Recorder()
    w = export.WholePieces(f)
    rng = np.random.default_rng(0)
    parts = [rng.bytes(int(n)) for n in rng.integers(1, 5 << 20, 40)]
    for p in parts:
        w.write(p)
    w.close()
    assert f.getvalue() == b"".join(parts)
    assert len(sizes) > 3 and all(n % (2 << 20) == 0 for n in sizes[:-1]), sizes
