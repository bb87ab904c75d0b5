#!/usr/bin/env python3
"""Write small random HuggingFace-format DeepSeek checkpoints for the tests.

Each variant has the real tensor names, dtypes and config.json fields of one model family
(as the HF config.json files and safetensors of those models name them), with tiny dimensions chosen so that wrong splits cannot pass by accident:
v_head_dim != qk_nope_head_dim, kv_lora_rank not a multiple of 128, several heads, and (FP8) dims
above 128 that are not multiples of 128, so the 128x128 scale grid has partial edge blocks.
The safetensors files are written by our own code (numpy only). Output is a deterministic function
of (variant, seed).

    gen_checkpoints.py <variant> <out_dir> [--seed N]
    from gen_checkpoints import write_checkpoint; write_checkpoint("v3", "/tmp/v3", seed=0)
"""
import argparse
import json
import os
import shutil
import struct
import zlib

import numpy as np

YARN_V2 = {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
           "beta_fast": 32, "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
YARN_V3 = {"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
           "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}

# Per-variant config (HF field names) plus generator settings (keys starting with "_").
VARIANTS = {
    # DeepSeek-V2-Lite-like: plain q_proj, softmax greedy, no renorm, rsf 1, F32, yarn mscale 0.707.
    # 16 heads (V2-Lite's count) and kv_lora_rank 72: run.c's attention tiles (16 heads x 8 rows, 8 heads
    # x 32 values) occur whole and cut (the other variants' 3-5 heads cut the head tiles).
    "v2lite": dict(
        model_type="deepseek_v2", architectures=["DeepseekV2ForCausalLM"],
        hidden_size=96, num_hidden_layers=3, vocab_size=400, num_attention_heads=16,
        q_lora_rank=None, kv_lora_rank=72, qk_nope_head_dim=24, qk_rope_head_dim=16, v_head_dim=20,
        intermediate_size=160, moe_intermediate_size=48,
        n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=3,
        n_group=1, topk_group=1, topk_method="greedy", scoring_func="softmax",
        norm_topk_prob=False, routed_scaling_factor=1.0,
        first_k_dense_replace=1, moe_layer_freq=1,
        rope_theta=10000.0, rope_scaling=dict(YARN_V2), rms_norm_eps=1e-6,
        max_position_embeddings=163840, bos_token_id=0, eos_token_id=1,
        torch_dtype="float32", _dtype="F32"),
    # DeepSeek-V2-like: q LoRA, softmax group_limited_greedy (4 groups, keep 2), rsf 16, BF16.
    "v2": dict(
        model_type="deepseek_v2", architectures=["DeepseekV2ForCausalLM"],
        hidden_size=112, num_hidden_layers=3, vocab_size=512, num_attention_heads=3,
        q_lora_rank=56, kv_lora_rank=36, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24,
        intermediate_size=192, moe_intermediate_size=40,
        n_routed_experts=16, n_shared_experts=2, num_experts_per_tok=4,
        n_group=4, topk_group=2, topk_method="group_limited_greedy", scoring_func="softmax",
        norm_topk_prob=False, routed_scaling_factor=16.0,
        first_k_dense_replace=1, moe_layer_freq=1,
        rope_theta=10000.0, rope_scaling=dict(YARN_V2), rms_norm_eps=1e-6,
        max_position_embeddings=163840, bos_token_id=0, eos_token_id=1,
        torch_dtype="bfloat16", _dtype="BF16"),
    # DeepSeek-V3-like: q LoRA, sigmoid noaux_tc with F32 bias, norm_topk_prob, rsf 2.5, BF16.
    # Ships a tiny V3-style tokenizer.json (3 + 256 + 60 = 319 ids < vocab_size 600): rows 319..599
    # are padding, and their lm_head rows are made large so that an engine that samples them fails.
    "v3": dict(
        model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"],
        hidden_size=128, num_hidden_layers=4, vocab_size=600, num_attention_heads=4,
        q_lora_rank=48, kv_lora_rank=44, qk_nope_head_dim=20, qk_rope_head_dim=16, v_head_dim=12,
        intermediate_size=176, moe_intermediate_size=32,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        n_group=4, topk_group=2, topk_method="noaux_tc", scoring_func="sigmoid",
        norm_topk_prob=True, routed_scaling_factor=2.5,
        first_k_dense_replace=2, moe_layer_freq=1,
        rope_theta=10000.0, rope_scaling=dict(YARN_V3), rms_norm_eps=1e-6,
        max_position_embeddings=163840, bos_token_id=0, eos_token_id=1,
        num_nextn_predict_layers=0, torch_dtype="bfloat16", _dtype="BF16", _tokenizer_merges=60),
    # DeepSeek-V3 FP8: e4m3 + 128x128 float32 weight_scale_inv (partial edge blocks: hidden 200),
    # 3 shards with an index, and the MTP layer (index num_hidden_layers) present in the files.
    # Its correction biases are all shifted by -1: selection is invariant to that shift when dropped
    # groups are masked with -inf (the official inference/model.py), but not when they are masked
    # with 0 (HF's native code): all biased scores are negative, so a 0 mask would pick experts from
    # the dropped groups.
    "v3fp8": dict(
        model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"],
        hidden_size=200, num_hidden_layers=3, vocab_size=700, num_attention_heads=4,
        q_lora_rank=136, kv_lora_rank=40, qk_nope_head_dim=24, qk_rope_head_dim=16, v_head_dim=20,
        intermediate_size=264, moe_intermediate_size=72,
        n_routed_experts=12, n_shared_experts=1, num_experts_per_tok=3,
        n_group=4, topk_group=2, topk_method="noaux_tc", scoring_func="sigmoid",
        norm_topk_prob=True, routed_scaling_factor=2.5,
        first_k_dense_replace=1, moe_layer_freq=1,
        rope_theta=10000.0, rope_scaling=dict(YARN_V3), rms_norm_eps=1e-6,
        max_position_embeddings=163840, bos_token_id=0, eos_token_id=1,
        num_nextn_predict_layers=1, torch_dtype="bfloat16",
        quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3",
                             "quant_method": "fp8", "weight_block_size": [128, 128]},
        _dtype="BF16", _fp8=True, _shards=3, _bias_shift=-1.0),
    # Moonlight-like: no rope_scaling at all (plain RoPE, base 50000, scale 1/sqrt(dn+dr)), no q LoRA,
    # n_group 1, 2 shared experts, and the correction bias stored as BF16 (as Moonlight does: llama.cpp #12044's log).
    # Ships Kimi's tokenizer files (tests/data/kimi_tokenizer: tiktoken.model, tokenizer_config.json and the
    # pat_str of tokenization_moonshot.py, no tokenizer.json); vocab_size = its 6916 ranks + 256 specials, as
    # Moonlight's 163840 = 163584 + 256; bos [BOS] and eos <|im_end|> at the same offsets as Moonlight's.
    "moonlight": dict(
        model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"],
        hidden_size=72, num_hidden_layers=3, vocab_size=7172, num_attention_heads=3,
        q_lora_rank=None, kv_lora_rank=20, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=12,
        intermediate_size=120, moe_intermediate_size=28,
        n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=3,
        n_group=1, topk_group=1, topk_method="noaux_tc", scoring_func="sigmoid",
        norm_topk_prob=True, routed_scaling_factor=2.446,
        first_k_dense_replace=1, moe_layer_freq=1,
        rope_theta=50000.0, rope_scaling=None, rms_norm_eps=1e-5,
        max_position_embeddings=8192, bos_token_id=6916, eos_token_id=6918,
        num_nextn_predict_layers=0, torch_dtype="bfloat16", _dtype="BF16", _bias_dtype="BF16",
        _tokenizer_dir="kimi_tokenizer", _n_tokens=7172),
    # Kimi-K2/Moonlight-like, saved by a newer transformers: `rope_parameters` spelling (with
    # rope_theta and rope_type inside), no q LoRA, n_group 1, eps 1e-5, F16 weights,
    # eos as a list, moe_layer_freq 2 (MoE only at layer 2 of 4), mscale != mscale_all_dim (so the
    # cos/sin multiplier mscale(s, mscale) / mscale(s, mscale_all_dim) = 1.040, HF modeling_deepseek.py's YaRN,
    # is not 1; no released model does this, the formula does). The embeddings and the latent rows of
    # kv_a_proj are tiny (mean square ~1e-5), so using the wrong eps (rms_norm_eps 1e-5 for
    # input_layernorm, 1e-6 for kv_a_layernorm as in HF modeling_deepseek.py) shows in the logits.
    "k2rp": dict(
        model_type="kimi_k2", architectures=["DeepseekV3ForCausalLM"],
        hidden_size=80, num_hidden_layers=4, vocab_size=333, num_attention_heads=5,
        q_lora_rank=None, kv_lora_rank=28, qk_nope_head_dim=12, qk_rope_head_dim=8, v_head_dim=16,
        intermediate_size=144, moe_intermediate_size=24,
        n_routed_experts=10, n_shared_experts=1, num_experts_per_tok=3,
        n_group=1, topk_group=1, topk_method="noaux_tc", scoring_func="sigmoid",
        norm_topk_prob=True, routed_scaling_factor=2.827,
        first_k_dense_replace=1, moe_layer_freq=2,
        rope_parameters={"rope_type": "yarn", "rope_theta": 50000.0, "factor": 32.0,
                         "original_max_position_embeddings": 4096, "beta_fast": 32.0,
                         "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.85},
        rms_norm_eps=1e-5, max_position_embeddings=131072, bos_token_id=2, eos_token_id=[3, 4],
        num_nextn_predict_layers=0, torch_dtype="float16", _dtype="F16", _tiny_norm_inputs=True),
    # GLM-4.7-Flash-like (model_type glm4_moe_lite; its config.json field spellings): free head dims with
    # dv != dn (24/8/32 for the real 192/64/256), a sigmoid noaux_tc router although config.json has no
    # scoring_func, no YaRN (rope_theta 1e6, rope_scaling null), an eos_token_id list and no bos_token_id,
    # q LoRA, rms_norm_eps 1e-5 with tiny q_a/kv_a inputs (HF builds q_a_layernorm and kv_a_layernorm with
    # eps 1e-6), no moe_layer_freq, and the MTP layer in the files. Ships the GLM tokenizer of
    # tests/data/glm_tokenizer (7029 ids < vocab_size 7040, as 154856 < 154880).
    "glm": dict(
        model_type="glm4_moe_lite", architectures=["Glm4MoeLiteForCausalLM"],
        hidden_size=64, num_hidden_layers=3, vocab_size=7040, num_attention_heads=4,
        q_lora_rank=40, kv_lora_rank=28, qk_nope_head_dim=24, qk_rope_head_dim=8, v_head_dim=32,
        intermediate_size=128, moe_intermediate_size=24,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=3,
        n_group=1, topk_group=1, topk_method="noaux_tc",
        norm_topk_prob=True, routed_scaling_factor=1.8, first_k_dense_replace=1,
        rope_theta=1000000.0, rope_scaling=None, partial_rotary_factor=1.0, rms_norm_eps=1e-5,
        max_position_embeddings=202752, eos_token_id=[6993, 7000, 7002], pad_token_id=6993,
        num_nextn_predict_layers=1, dtype="bfloat16", _dtype="BF16", _tiny_norm_inputs=True,
        _tokenizer_dir="glm_tokenizer", _n_tokens=7029),
    # DeepSeek-V3.2-like (model_type deepseek_v32): V3 plus the lightning indexer in every layer
    # (self_attn.indexer.*, the names of the HF checkpoint). index_topk 8 is far below the test prompts
    # (40-64 tokens), so DeepSeek Sparse Attention drops most positions and the selection shows in the
    # logits; index_head_dim 32 > qk_rope_head_dim 16, so the indexer's rope part (its first 16 values)
    # and its rest both exist. k_norm stored as BF16 (its on-disk dtype is not known).
    "v32": dict(
        model_type="deepseek_v32", architectures=["DeepseekV32ForCausalLM"],
        hidden_size=128, num_hidden_layers=3, vocab_size=500, num_attention_heads=4,
        q_lora_rank=48, kv_lora_rank=44, qk_nope_head_dim=20, qk_rope_head_dim=16, v_head_dim=12,
        intermediate_size=176, moe_intermediate_size=32,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4,
        n_group=4, topk_group=2, topk_method="noaux_tc", scoring_func="sigmoid",
        norm_topk_prob=True, routed_scaling_factor=2.5,
        first_k_dense_replace=1, moe_layer_freq=1,
        rope_theta=10000.0, rope_scaling=dict(YARN_V3), rms_norm_eps=1e-6,
        max_position_embeddings=163840, bos_token_id=0, eos_token_id=1,
        index_n_heads=8, index_head_dim=32, index_topk=8,
        num_nextn_predict_layers=0, torch_dtype="bfloat16", _dtype="BF16", _index_norm_dtype="BF16"),
    # DeepSeek-V3.2 FP8, as released: e4m3 weights (the indexer's wq_b and wk too) with 128x128 scales
    # stored as F8_E8M0 powers of two (scale_fmt ue8m0), weights_proj BF16, k_norm F32, the MTP layer
    # (with its own indexer) in the files; hidden 200 and q_lora_rank 136 give partial edge blocks.
    "v32fp8": dict(
        model_type="deepseek_v32", architectures=["DeepseekV32ForCausalLM"],
        hidden_size=200, num_hidden_layers=2, vocab_size=450, num_attention_heads=3,
        q_lora_rank=136, kv_lora_rank=40, qk_nope_head_dim=24, qk_rope_head_dim=16, v_head_dim=20,
        intermediate_size=264, moe_intermediate_size=72,
        n_routed_experts=12, n_shared_experts=1, num_experts_per_tok=3,
        n_group=4, topk_group=2, topk_method="noaux_tc", scoring_func="sigmoid",
        norm_topk_prob=True, routed_scaling_factor=2.5,
        first_k_dense_replace=1, moe_layer_freq=1,
        rope_theta=10000.0, rope_scaling=dict(YARN_V3), rms_norm_eps=1e-6,
        max_position_embeddings=163840, bos_token_id=0, eos_token_id=1,
        index_n_heads=6, index_head_dim=64, index_topk=8,
        num_nextn_predict_layers=1, torch_dtype="bfloat16",
        quantization_config={"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                             "scale_fmt": "ue8m0", "weight_block_size": [128, 128]},
        _dtype="BF16", _fp8=True, _scale_dtype="F8_E8M0", _shards=2),
}

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# ----------------------------------------------------------------------------
# dtype encoders


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16, nearest-even, returned as uint16 bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def _e4m3_positive_table() -> np.ndarray:
    """Values of the e4m3fn bytes 0x00..0x7E (ascending; 0x7F is NaN)."""
    vals = []
    for b in range(0x7F):
        e, m = (b >> 3) & 15, b & 7
        vals.append(2.0 ** -6 * (m / 8) if e == 0 else 2.0 ** (e - 7) * (1 + m / 8))
    return np.array(vals)


def f32_to_e4m3_bytes(x: np.ndarray) -> np.ndarray:
    """Nearest float8_e4m3fn encoding (saturating at 448)."""
    table = _e4m3_positive_table()
    a = np.minimum(np.abs(x).astype(np.float64), 448.0)
    hi = np.clip(np.searchsorted(table, a), 1, len(table) - 1)
    lo = hi - 1
    idx = np.where(a - table[lo] <= table[hi] - a, lo, hi).astype(np.uint8)
    return idx | np.where(x < 0, 0x80, 0).astype(np.uint8)


def quantize_fp8_blocks(w: np.ndarray, rng: np.random.Generator, pow2: bool = False):
    """Quantise [M, N] to e4m3 with a [ceil(M/128), ceil(N/128)] float32 scale grid (multiplied
    at dequantisation). Each block gets its own random gain so a transposed or divided grid is wrong.
    pow2: scales rounded up to powers of two (scale_fmt ue8m0)."""
    m, n = w.shape
    gm, gn = -(-m // 128), -(-n // 128)
    gain = rng.uniform(0.5, 2.0, size=(gm, gn))
    w = w * np.repeat(np.repeat(gain, 128, 0), 128, 1)[:m, :n]
    scale = np.zeros((gm, gn), np.float32)
    q = np.zeros((m, n), np.uint8)
    for i in range(gm):
        for j in range(gn):
            blk = w[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128]
            s = np.float32(np.abs(blk).max() / 448.0 * rng.uniform(1.0, 1.3))
            if pow2:
                s = np.float32(2.0 ** np.ceil(np.log2(s)))
            scale[i, j] = s
            q[i * 128:(i + 1) * 128, j * 128:(j + 1) * 128] = f32_to_e4m3_bytes(blk / s)
    return q, scale


# ----------------------------------------------------------------------------
# safetensors writer


def encode_tensor(x: np.ndarray, dtype: str) -> bytes:
    if dtype == "F32":
        return np.ascontiguousarray(x, dtype="<f4").tobytes()
    if dtype == "F16":
        return np.ascontiguousarray(x, dtype="<f2").tobytes()
    if dtype == "BF16":
        return f32_to_bf16_bits(x).astype("<u2").tobytes()
    if dtype in ("F8_E4M3", "U8"):
        return np.ascontiguousarray(x, dtype=np.uint8).tobytes()
    if dtype == "F8_E8M0":  # powers of two as their biased exponent, 2^(b - 127)
        return (np.log2(x).astype(np.int32) + 127).astype(np.uint8).tobytes()
    raise ValueError(dtype)


def write_safetensors(path: str, tensors: list) -> int:
    """tensors: list of (name, dtype, shape, raw bytes). Returns the data size."""
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for _, _, _, raw in tensors:
            f.write(raw)
    return off


# ----------------------------------------------------------------------------
# tokenizer (a miniature DeepSeek-V3 tokenizer.json: same pre-tokenizer, own BPE merges)

V3_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"}, "behavior": "Isolated", "invert": False},
    {"type": "Split", "pattern": {"Regex": "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+"},
     "behavior": "Isolated", "invert": False},
    {"type": "Split", "pattern": {"Regex": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|"
                                           "[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|"
                                           "\\s*[\r\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
SPECIALS = ["<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>",
            "<\uff5c\u2581pad\u2581\uff5c>"]
CORPUS = ("The quick brown fox jumps over the lazy dog. In the beginning the model reads the "
          "tokens one at a time, and then it writes them out again. There are many things in the "
          "world that the engine can learn, and the tests check them all. 12345 apples and 678 pears.")


def byte_chars() -> list:
    """GPT-2 ByteLevel table: character for each byte 0..255."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def tokenizer_size(cfg: dict) -> int:
    n = cfg.get("_tokenizer_merges")
    return cfg.get("_n_tokens", cfg["vocab_size"]) if n is None else len(SPECIALS) + 256 + n


def train_merges(n: int) -> list:
    """Plain BPE on CORPUS words (space attached to the following word, as ByteLevel does)."""
    bc = byte_chars()
    words = [" " + w if i else w for i, w in enumerate(CORPUS.split(" "))]
    seqs = [[bc[b] for b in w.encode()] for w in words]
    merges = []
    while len(merges) < n:
        counts = {}
        for sq in seqs:
            for a, b in zip(sq, sq[1:]):
                counts[(a, b)] = counts.get((a, b), 0) + 1
        if not counts:
            break
        best = max(counts.items(), key=lambda kv: (kv[1], -len(merges)))[0]
        best = sorted([p for p, c in counts.items() if c == counts[best]])[0]
        merges.append(best)
        for sq in seqs:
            i = 0
            while i < len(sq) - 1:
                if (sq[i], sq[i + 1]) == best:
                    sq[i:i + 2] = [sq[i] + sq[i + 1]]
                i += 1
    return merges


def write_tokenizer(out_dir: str, n_merges: int) -> None:
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for ch in byte_chars():
        vocab[ch] = len(vocab)
    merges = train_merges(n_merges)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    assert len(vocab) == len(SPECIALS) + 256 + n_merges
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(SPECIALS)]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
           "normalizer": {"type": "Sequence", "normalizers": []}, "pre_tokenizer": V3_PRE_TOKENIZER,
           "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]}}
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)

    def added_token(t):
        return {"__type": "AddedToken", "content": t, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}
    tc = {"add_bos_token": True, "add_eos_token": False, "bos_token": added_token(SPECIALS[0]),
          "eos_token": added_token(SPECIALS[1]), "pad_token": added_token(SPECIALS[1]),
          "clean_up_tokenization_spaces": False, "legacy": True, "model_max_length": 131072,
          "sp_model_kwargs": {}, "unk_token": None, "tokenizer_class": "LlamaTokenizerFast"}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tc, f, ensure_ascii=False, indent=2)


# ----------------------------------------------------------------------------
# model


def is_moe_layer(cfg: dict, l: int) -> bool:
    return bool(cfg["n_routed_experts"]) and l >= cfg["first_k_dense_replace"] \
        and l % cfg.get("moe_layer_freq", 1) == 0


def make_tensors(cfg: dict, rng: np.random.Generator) -> list:
    """(name, float32 array, kind) in HF naming; kind: 'linear' (FP8-able), 'norm', 'other'."""
    D, H, V = cfg["hidden_size"], cfg["num_attention_heads"], cfg["vocab_size"]
    rq, r = cfg["q_lora_rank"], cfg["kv_lora_rank"]
    dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    E, S, Ie, I = (cfg["n_routed_experts"], cfg["n_shared_experts"],
                   cfg["moe_intermediate_size"], cfg["intermediate_size"])
    out = []

    def lin(name, rows, cols, gain=1.0):
        out.append((name, (rng.standard_normal((rows, cols)) * gain / np.sqrt(cols)).astype(np.float32), "linear"))

    def norm(name, n):
        out.append((name, rng.uniform(0.6, 1.4, n).astype(np.float32), "norm"))

    def layer(p, l):
        norm(p + "input_layernorm.weight", D)
        if rq:
            lin(p + "self_attn.q_a_proj.weight", rq, D, 0.003 if cfg.get("_tiny_norm_inputs") else 1.0)
            norm(p + "self_attn.q_a_layernorm.weight", rq)
            lin(p + "self_attn.q_b_proj.weight", H * (dn + dr), rq, 1.5)
        else:
            lin(p + "self_attn.q_proj.weight", H * (dn + dr), D, 1.5)
        lin(p + "self_attn.kv_a_proj_with_mqa.weight", r + dr, D, 1.5)
        if cfg.get("_tiny_norm_inputs"):
            out[-1][1][:r] *= 0.003
        norm(p + "self_attn.kv_a_layernorm.weight", r)
        lin(p + "self_attn.kv_b_proj.weight", H * (dn + dv), r)
        lin(p + "self_attn.o_proj.weight", D, H * dv)
        if cfg.get("index_n_heads"):  # DeepSeek-V3.2's lightning indexer
            Hi, di = cfg["index_n_heads"], cfg["index_head_dim"]
            lin(p + "self_attn.indexer.wq_b.weight", Hi * di, rq)
            lin(p + "self_attn.indexer.wk.weight", di, D)
            out.append((p + "self_attn.indexer.k_norm.weight", rng.uniform(0.6, 1.4, di).astype(np.float32), "index_norm"))
            out.append((p + "self_attn.indexer.k_norm.bias", rng.uniform(-0.3, 0.3, di).astype(np.float32), "index_norm"))
            out.append((p + "self_attn.indexer.weights_proj.weight",
                        (rng.standard_normal((Hi, D)) / np.sqrt(D)).astype(np.float32), "other"))
        norm(p + "post_attention_layernorm.weight", D)
        if is_moe_layer(cfg, l):
            out.append((p + "mlp.gate.weight",
                        (rng.standard_normal((E, D)) * 1.5 / np.sqrt(D)).astype(np.float32), "other"))
            if cfg["topk_method"] == "noaux_tc":
                out.append((p + "mlp.gate.e_score_correction_bias",
                            (rng.uniform(-0.15, 0.25, E) + cfg.get("_bias_shift", 0.0)).astype(np.float32), "bias"))
            for e in range(E):
                q = p + f"mlp.experts.{e}."
                lin(q + "gate_proj.weight", Ie, D)
                lin(q + "up_proj.weight", Ie, D)
                lin(q + "down_proj.weight", D, Ie)
            if S:
                lin(p + "mlp.shared_experts.gate_proj.weight", S * Ie, D)
                lin(p + "mlp.shared_experts.up_proj.weight", S * Ie, D)
                lin(p + "mlp.shared_experts.down_proj.weight", D, S * Ie)
        else:
            lin(p + "mlp.gate_proj.weight", I, D)
            lin(p + "mlp.up_proj.weight", I, D)
            lin(p + "mlp.down_proj.weight", D, I)

    embed = rng.standard_normal((V, D)).astype(np.float32)
    if cfg.get("_tiny_norm_inputs"):
        embed *= 0.003
    out.append(("model.embed_tokens.weight", embed, "other"))
    L = cfg["num_hidden_layers"]
    for l in range(L):
        layer(f"model.layers.{l}.", l)
    norm("model.norm.weight", D)
    head = (rng.standard_normal((V, D)) * 3.0 / np.sqrt(D)).astype(np.float32)
    n_tok = tokenizer_size(cfg)
    head[n_tok:] *= 1.6  # padding rows win the unmasked argmax often
    out.append(("lm_head.weight", head, "other"))
    for m in range(cfg.get("num_nextn_predict_layers") or 0):  # MTP module (DeepSeek-V3 §2.2)
        p = f"model.layers.{L + m}."
        out.append((p + "embed_tokens.weight", embed, "other"))
        norm(p + "enorm.weight", D)
        norm(p + "hnorm.weight", D)
        out.append((p + "eh_proj.weight",
                    (rng.standard_normal((D, 2 * D)) / np.sqrt(2 * D)).astype(np.float32), "other"))
        layer(p, L + m)
        norm(p + "shared_head.norm.weight", D)
        out.append((p + "shared_head.head.weight", head, "other"))
    return out


def hf_config(cfg: dict) -> dict:
    c = {k: v for k, v in cfg.items() if not k.startswith("_")}
    c.update(num_key_value_heads=cfg["num_attention_heads"], hidden_act="silu",
             attention_bias=False, attention_dropout=0.0, tie_word_embeddings=False,
             initializer_range=0.02, use_cache=True)
    if cfg["model_type"] == "glm4_moe_lite":
        c.update(transformers_version="5.0.0rc0")
    else:
        c.update(pretraining_tp=1, ep_size=1, aux_loss_alpha=0.001, seq_aux=True, transformers_version="4.46.3")
    if cfg["model_type"] == "deepseek_v2":
        c["auto_map"] = {"AutoConfig": "configuration_deepseek.DeepseekV2Config",
                         "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM"}
    return c


def variant_seed(variant: str, seed: int) -> int:
    return (zlib.crc32(variant.encode()) + 1000003 * seed) % (2 ** 32)


def write_checkpoint(variant: str, out_dir: str, seed: int = 0) -> str:
    cfg = VARIANTS[variant]
    rng = np.random.default_rng(variant_seed(variant, seed))
    os.makedirs(out_dir, exist_ok=True)
    dtype, fp8 = cfg["_dtype"], cfg.get("_fp8", False)
    entries = []
    for name, x, kind in make_tensors(cfg, rng):
        if kind in ("bias", "index_norm"):
            bd = cfg.get("_bias_dtype" if kind == "bias" else "_index_norm_dtype", "F32")
            entries.append((name, bd, x.shape, encode_tensor(x, bd)))
        elif kind == "linear" and fp8:
            q, s = quantize_fp8_blocks(x, rng, cfg.get("_scale_dtype") == "F8_E8M0")
            sd = cfg.get("_scale_dtype", "F32")
            entries.append((name, "F8_E4M3", x.shape, encode_tensor(q, "U8")))
            entries.append((name + "_scale_inv", sd, s.shape, encode_tensor(s, sd)))
        else:
            entries.append((name, dtype, x.shape, encode_tensor(x, dtype)))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(cfg), f, indent=2)
    if cfg.get("_tokenizer_merges"):
        write_tokenizer(out_dir, cfg["_tokenizer_merges"])
    if cfg.get("_tokenizer_dir"):
        src = os.path.join(DATA, cfg["_tokenizer_dir"])
        for name in sorted(os.listdir(src)):
            shutil.copyfile(os.path.join(src, name), os.path.join(out_dir, name))
    n_shards = cfg.get("_shards", 1)
    if n_shards == 1:
        write_safetensors(os.path.join(out_dir, "model.safetensors"), entries)
        return out_dir
    # Shard by cumulative size, keeping a weight next to its scale; the shards list tensors in a
    # different order from the model (as real shards do), and the index maps each name to its file.
    total = sum(len(e[3]) for e in entries)
    shards, cur, acc = [[] for _ in range(n_shards)], 0, 0
    for e in entries:
        if acc > (cur + 1) * total / n_shards and cur < n_shards - 1 and not e[0].endswith("_scale_inv"):
            cur += 1
        shards[cur].append(e)
        acc += len(e[3])
    weight_map, size = {}, 0
    for i, sh in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        sh = sorted(sh, key=lambda e: e[0])
        size += write_safetensors(os.path.join(out_dir, fname), sh)
        weight_map.update({e[0]: fname for e in sh})
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
    return out_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variant", choices=sorted(VARIANTS))
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    write_checkpoint(a.variant, a.out_dir, a.seed)
    print(a.out_dir)


if __name__ == "__main__":
    main()
