#!/usr/bin/env python3
"""
Export a HuggingFace DeepSeek-V2/V3 checkpoint to one seek.c model file (format v1).

    python3 export.py <hf_dir> <out.bin> [--dtype f32|bf16|q8|q4]
    python3 export.py --tokenizer <hf_dir> <tokenizer.bin>

Python 3 + numpy only: safetensors is parsed here (8-byte little-endian header length, a JSON
header, then raw data whose offsets are relative to the end of the header). Tensors are streamed
a block of rows at a time, so memory use does not grow with the model size.

File layout (all little-endian): "SEEK", u32 version, u32 n_config, n_config 4-byte config words,
u32 n_tensors, n_tensors 128-byte table entries (name[96], type, ndim, rows, cols, u64 offset,
u64 nbytes), then each tensor's data at a 64-byte aligned offset, in table order.

Quantized weights (--dtype q8|q4; 2-D matrices only, the router stays F32 like every 1-D tensor).
Each row of a [rows, cols] matrix is cut into nb = ceil(cols / 32) groups of 32 consecutive values;
the last group of a row whose length is not a multiple of 32 is padded with zeros (quantized to 0,
so it adds nothing to a dot product). A row is nb blocks back to back, rows back to back, so a
matrix-vector product streams the tensor front to back:
  type 2 Q8: block = bf16 scale d, then 32 x int8 q; value = d * q, q in -127..127 (d = absmax / 127)
             34 bytes per block, nbytes = rows * nb * 34
  type 3 Q4: block = bf16 scale d, then 16 bytes; byte j holds q_j in its low nibble and q_{j+16} in
             its high nibble; value = d * (q - 8), q in 0..15 (d = -m / 8 where m is the value of
             largest magnitude, so m itself is exactly -8 d)
             18 bytes per block, nbytes = rows * nb * 18
bf16 scales (round to nearest even) keep the blocks at 34 and 18 bytes and cost a shift to decode;
the values are quantized with the rounded scale, so the scale's rounding adds no error of its own.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional

import numpy as np

MAGIC = b"SEEK"
VERSION = 1
ALIGN = 64
NAME_BYTES = 96
ENTRY_BYTES = 128

# tensor types in the model file
F32, BF16, Q8, Q4, U8 = 0, 1, 2, 3, 16
TYPE_SIZE = {F32: 4, BF16: 2, U8: 1}
QUANT_GROUP = 32                   # values per scale, along a row
BLOCK_BYTES = {Q8: 2 + 32, Q4: 2 + 16}
DTYPES = {"f32": F32, "bf16": BF16, "q8": Q8, "q4": Q4}

SUPPORTED_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "kimi_k2")
TOPK_METHODS = {"greedy": 0, "group_limited_greedy": 1, "noaux_tc": 2}
SCORING_FUNCS = {"softmax": 0, "sigmoid": 1}

# safetensors dtypes we can read, and their element sizes
SOURCE_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1}
# sizes of other safetensors dtypes, only to validate headers; reading them is an error
OTHER_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2,
                  "I8": 1, "U8": 1, "BOOL": 1, "F8_E5M2": 1}

FP8_BLOCK = 128              # DeepSeek-V3 weight_block_size [128, 128]
CHUNK_ELEMENTS = 1 << 20     # elements per streamed block of rows (4 MB as f32)
PROGRESS_SECONDS = 5.0
MAX_HEADER_BYTES = 100 << 20  # real headers are well under 10 MB


class ExportError(Exception):
    """A problem with the input that the user must fix; printed as one line."""


def fail(msg: str) -> None:
    raise ExportError(msg)


# ----------------------------------------------------------------------------------------------
# config.json -> the 40 config words

# (name, kind): kind "i" = int32, "f" = float32, "I" = uint32. Order = word index in the file.
CONFIG_WORDS = [
    ("dim", "i"), ("n_layers", "i"), ("vocab_size", "i"), ("n_heads", "i"),
    ("q_lora_rank", "i"), ("kv_lora_rank", "i"), ("qk_nope_head_dim", "i"),
    ("qk_rope_head_dim", "i"), ("v_head_dim", "i"), ("intermediate_size", "i"),
    ("moe_intermediate_size", "i"), ("n_routed_experts", "i"), ("n_shared_experts", "i"),
    ("num_experts_per_tok", "i"), ("n_group", "i"), ("topk_group", "i"), ("topk_method", "i"),
    ("scoring_func", "i"), ("norm_topk_prob", "i"), ("routed_scaling_factor", "f"),
    ("first_k_dense_replace", "i"), ("moe_layer_freq", "i"), ("rope_theta", "f"),
    ("rope_type", "i"), ("rope_factor", "f"), ("rope_original_max_pos", "i"),
    ("rope_beta_fast", "f"), ("rope_beta_slow", "f"), ("rope_mscale", "f"),
    ("rope_mscale_all_dim", "f"), ("rms_norm_eps", "f"), ("max_position_embeddings", "i"),
    ("bos_token_id", "i"), ("eos_token_id", "i"), ("n_mtp_layers", "i"), ("n_tokens", "i"),
    ("tokenizer_hash_lo", "I"), ("tokenizer_hash_hi", "I"), ("reserved0", "i"), ("reserved1", "i"),
]
N_CONFIG = len(CONFIG_WORDS)  # 40


def read_json(path: str, what: str) -> dict:
    try:
        with open(path, "r", encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        fail(f"{what} not found: {path}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(f"cannot read {what} {path}: {e}")
    if not isinstance(value, dict):
        fail(f"{what} {path}: expected a JSON object")
    return value


def get_int(raw: dict, key: str, default: Optional[int] = None, null: Optional[int] = None) -> int:
    """raw[key] as an int; `default` if absent, `null` if present but null."""
    value = raw.get(key, default)
    if key in raw and raw[key] is None:
        value = null
    if value is None:
        fail(f"config.json: missing or null '{key}'")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        fail(f"config.json: '{key}' must be an integer, got {value!r}")
    return int(value)


def get_float(raw: dict, key: str, default: Optional[float] = None) -> float:
    value = raw.get(key)
    if value is None:
        value = default
    if value is None:
        fail(f"config.json: missing '{key}'")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"config.json: '{key}' must be a number, got {value!r}")
    return float(value)


def get_choice(raw: dict, key: str, choices: dict, default: str) -> int:
    value = raw.get(key)
    if value is None:
        value = default
    if value not in choices:
        fail(f"config.json: unsupported {key} {value!r} (supported: {', '.join(choices)})")
    return choices[value]


def first_token_id(raw: dict, key: str) -> int:
    """bos/eos may be missing (-1), an int, or a list (use the first)."""
    value = raw.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return -1
    return get_int({key: value}, key)


def rope_words(raw: dict) -> dict:
    """RoPE/YaRN words. Older configs say rope_scaling {type: ...}; transformers re-saves them as
    rope_parameters {rope_type: ..., rope_theta: ...}. Spec §1.1 and §3.5."""
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        fail("config.json: rope_scaling / rope_parameters must be an object or null")
    theta = raw.get("rope_theta")
    for params in (raw.get("rope_parameters"), rope):
        if theta is None and isinstance(params, dict):
            theta = params.get("rope_theta")
    words = {"rope_theta": get_float({"rope_theta": theta}, "rope_theta", 10000.0)}
    kind = rope.get("type", rope.get("rope_type")) or "default"
    if kind == "yarn":
        words.update(
            rope_type=1,
            rope_factor=get_float(rope, "factor", 1.0),
            rope_original_max_pos=get_int(
                rope, "original_max_position_embeddings",
                default=get_int(raw, "max_position_embeddings")),
            rope_beta_fast=get_float(rope, "beta_fast", 32.0),
            rope_beta_slow=get_float(rope, "beta_slow", 1.0),
            # Absent keys take the HF remote code's defaults (DeepseekV2YarnRotaryEmbedding:
            # mscale=1, mscale_all_dim=0): cos/sin get 0.1*ln(s)+1, the softmax no factor.
            rope_mscale=get_float(rope, "mscale", 1.0),
            rope_mscale_all_dim=get_float(rope, "mscale_all_dim", 0.0))
    elif kind == "default":
        words.update(rope_type=0, rope_factor=1.0, rope_original_max_pos=0, rope_beta_fast=0.0,
                     rope_beta_slow=0.0, rope_mscale=0.0, rope_mscale_all_dim=0.0)
    else:
        fail(f"config.json: unsupported rope scaling type {kind!r} (supported: yarn, none)")
    return words


def load_config(hf_dir: str) -> dict:
    """Read config.json into a dict with one key per config word (n_tokens and the tokenizer
    hash are filled in later). Defaults for absent values follow the team brief."""
    raw = read_json(os.path.join(hf_dir, "config.json"), "config.json")
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        fail(f"config.json: unsupported model_type {model_type!r} "
             f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    c = {
        "dim": get_int(raw, "hidden_size"),
        "n_layers": get_int(raw, "num_hidden_layers"),
        "vocab_size": get_int(raw, "vocab_size"),
        "n_heads": get_int(raw, "num_attention_heads"),
        "q_lora_rank": get_int(raw, "q_lora_rank", default=0, null=0),
        "kv_lora_rank": get_int(raw, "kv_lora_rank"),
        "qk_nope_head_dim": get_int(raw, "qk_nope_head_dim"),
        "qk_rope_head_dim": get_int(raw, "qk_rope_head_dim"),
        "v_head_dim": get_int(raw, "v_head_dim"),
        "intermediate_size": get_int(raw, "intermediate_size"),
        "moe_intermediate_size": get_int(raw, "moe_intermediate_size", default=0, null=0),
        "n_routed_experts": get_int(raw, "n_routed_experts", default=0, null=0),
        "n_shared_experts": get_int(raw, "n_shared_experts", default=0, null=0),
        "num_experts_per_tok": get_int(raw, "num_experts_per_tok", default=0, null=0),
        "n_group": get_int(raw, "n_group", default=1, null=1),
        "topk_group": get_int(raw, "topk_group", default=1, null=1),
        "topk_method": get_choice(raw, "topk_method", TOPK_METHODS, "greedy"),
        "scoring_func": get_choice(raw, "scoring_func", SCORING_FUNCS, "softmax"),
        "norm_topk_prob": int(bool(raw.get("norm_topk_prob", False))),
        "routed_scaling_factor": get_float(raw, "routed_scaling_factor", 1.0),
        "first_k_dense_replace": get_int(raw, "first_k_dense_replace", default=0, null=0),
        "moe_layer_freq": get_int(raw, "moe_layer_freq", default=1, null=1),
        **rope_words(raw),
        "rms_norm_eps": get_float(raw, "rms_norm_eps", 1e-6),
        "max_position_embeddings": get_int(raw, "max_position_embeddings"),
        "bos_token_id": first_token_id(raw, "bos_token_id"),
        "eos_token_id": first_token_id(raw, "eos_token_id"),
        "n_mtp_layers": 0,  # MTP layers (index >= n_layers) are skipped for now
        "n_tokens": 0, "tokenizer_hash_lo": 0, "tokenizer_hash_hi": 0,
        "reserved0": 0, "reserved1": 0,
    }
    c["tie_word_embeddings"] = bool(raw.get("tie_word_embeddings", False))  # not a config word
    check_config(c)
    return c


def check_config(c: dict) -> None:
    for key in ("dim", "n_layers", "vocab_size", "n_heads", "kv_lora_rank", "qk_nope_head_dim",
                "qk_rope_head_dim", "v_head_dim", "max_position_embeddings"):
        if not 0 < c[key] < 2**31:
            fail(f"config.json: {key} = {c[key]} is out of range")
    for key in ("q_lora_rank", "intermediate_size", "moe_intermediate_size", "n_routed_experts",
                "n_shared_experts", "num_experts_per_tok", "first_k_dense_replace"):
        if not 0 <= c[key] < 2**31:
            fail(f"config.json: {key} = {c[key]} is out of range")
    if c["moe_layer_freq"] < 1:
        fail(f"config.json: moe_layer_freq = {c['moe_layer_freq']} must be >= 1")
    if c["n_routed_experts"] > 0 and c["moe_intermediate_size"] <= 0:
        fail("config.json: n_routed_experts is set but moe_intermediate_size is not")


# ----------------------------------------------------------------------------------------------
# tokenizer: n_tokens, the embedded blob and its hash


# Tokenizer file, version 1 (all integers little-endian):
#   offset 0   4 bytes   magic "STOK"
#   offset 4   u32       version = 1
#   offset 8   u32       n_vocab: ids are 0 .. n_vocab-1
#   offset 12  u32       n_merges
#   offset 16  u32       n_added: number of added tokens (special or not)
#   offset 20  i32       bos_id (-1 if none)
#   offset 24  i32       eos_id (-1 if none)
#   offset 28  u32       flags: bit 0 add_bos_token, bit 1 add_eos_token (tokenizer_config.json)
#   offset 32  u32       pre_tokenizer: 1 = DeepSeek-V3 regex sequence (spec §6.1),
#                                       2 = DeepSeek-V2 7-stage pipeline (spec §6.2)
#   offset 36  u32       chat template family: 0 raw (none/unknown), 1 deepseek_v2 ("User: ...\n\nAssistant:"),
#                                              2 deepseek_v3, 3 deepseek_r1 (forced <think>), 4 deepseek_v3_1
#   offset 40  u32       template_nbytes: length of the verbatim chat_template string stored at the end
#   offset 44  u32       pool_nbytes: total length of all token byte strings
#   offset 48  (n_vocab+1) x u32   offsets into the pool: token i is pool[off[i] .. off[i+1]), off[0] = 0,
#                                  non-decreasing, off[n_vocab] = pool_nbytes
#              n_vocab x u8        token flags: bit 0 BPE token (byte-level vocab entry, may take part in
#                                  merges), bit 1 added token, bit 2 special (skip_special_tokens would drop
#                                  it), bit 3 added token matched after normalization (HF `normalized`);
#                                  flags 0 = an id with no token (a hole)
#              pool_nbytes bytes   token byte strings: for a BPE token, its vocab string mapped back through
#                                  the GPT-2 byte table; for an added token, its literal UTF-8 content
#              n_merges x 3 u32    merges (left id, right id, result id); rank = position in this list
#              n_added x u32       ids of the added tokens, in tokenizer.json order
#              template_nbytes     chat_template, UTF-8 (empty if none)
#   The file ends exactly there.

TOKENIZER_MAGIC = b"STOK"
TOKENIZER_VERSION = 1

PRETOK_V3 = 1
PRETOK_V2 = 2

CHAT_RAW, CHAT_V2, CHAT_V3, CHAT_R1, CHAT_V3_1 = 0, 1, 2, 3, 4

FLAG_BPE, FLAG_ADDED, FLAG_SPECIAL, FLAG_NORMALIZED = 1, 2, 4, 8

# The exact pre-tokenizers run.c implements (spec §6.1, §6.2). Anything else is refused: a tokenizer that
# silently pre-tokenizes differently would give wrong ids.
V3_SPLITS = [
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]
V2_LETTERS = (
    "A-Za-z\\u00B5\\u00C0-\\u00D6\\u00D8-\\u00F6\\u00F8-\\u01BA\\u01BC-\\u01BF\\u01C4-\\u0293\\u0295-\\u02AF"
    "\\u0370-\\u0373\\u0376\\u0377\\u037B-\\u037D\\u037F\\u0386\\u0388-\\u038A\\u038C\\u038E-\\u03A1"
    "\\u03A3-\\u03F5\\u03F7-\\u0481\\u048A-\\u052F\\u0531-\\u0556\\u10A0-\\u10C5\\u13A0-\\u13F5\\u13F8-\\u13FD"
    "\\u1C90-\\u1CBA\\u1CBD-\\u1CBF\\u1D00-\\u1D2B\\u1D6B-\\u1D77\\u1D79-\\u1D9A\\u1E00-\\u1F15\\u1F18-\\u1F1D"
    "\\u1F20-\\u1F45\\u1F48-\\u1F4D\\u1F50-\\u1F57\\u1F59\\u1F5B\\u1F5D\\u1F5F-\\u1F7D\\u1F80-\\u1FB4"
    "\\u1FB6-\\u1FBC\\u1FBE\\u1FC2-\\u1FC4\\u1FC6-\\u1FCC\\u1FD0-\\u1FD3\\u1FD6-\\u1FDB\\u1FE0-\\u1FEC"
    "\\u1FF2-\\u1FF4\\u1FF6-\\u1FFC\\u2102\\u2107\\u210A-\\u2113\\u2115\\u2119-\\u211D\\u2124\\u2126\\u2128"
    "\\u212A-\\u212D\\u212F-\\u2134\\u2139\\u213C-\\u213F\\u2145-\\u2149\\u214E\\u2183\\u2184\\u2C00-\\u2C7B"
    "\\u2C7E-\\u2CE4\\u2CEB-\\u2CEE\\u2CF2\\u2CF3\\uA640-\\uA66D\\uA680-\\uA69B\\uA722-\\uA76F\\uA771-\\uA787"
    "\\uA78B-\\uA78E\\uAB70-\\uABBF\\uFB00-\\uFB06\\uFB13-\\uFB17\\uFF21-\\uFF3A\\uFF41-\\uFF5A"
    "\\U00010400-\\U0001044F\\U000104B0-\\U000104D3\\U000104D8-\\U000104FB\\U00010C80-\\U00010CB2"
    "\\U00010CC0-\\U00010CF2\\U000118A0-\\U000118DF\\U0001E900-\\U0001E943"
)
V2_SPLITS = [
    "[\r\n]",
    "\\s?[" + V2_LETTERS + "]+",
    "\\s?[!-/:-~\\uFF01-\\uFF0F\\uFF1A-\\uFF5E\\u2018-\\u201F\\u3000-\\u3002]+",
    "\\s+$",
    "[\\u4E00-\\u9FA5\\u0800-\\u4E00\\uAC00-\\uD7FF]+",
]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table (spec §6.3 step 3)."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + n)
            n += 1
    return table


def split_patterns(pre: dict, where: str) -> tuple[list[str], list[dict]]:
    """Regexes of the leading Split(Isolated, not inverted) stages, and the remaining stages."""
    if not isinstance(pre, dict) or pre.get("type") != "Sequence":
        fail(f"{where}: pre_tokenizer must be a Sequence")
    stages = pre.get("pretokenizers")
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        fail(f"{where}: pretokenizers must be a list of objects")
    pats = []
    i = 0
    while i < len(stages) and stages[i].get("type") == "Split":
        s = stages[i]
        if s.get("behavior") != "Isolated" or s.get("invert"):
            fail(f"{where}: Split stage {i} must be behavior Isolated, invert false")
        pat = s.get("pattern", {})
        if "Regex" not in pat:
            fail(f"{where}: Split stage {i} must use a Regex pattern")
        pats.append(pat["Regex"])
        i += 1
    return pats, stages[i:]


def check_byte_level(stage: dict, where: str) -> None:
    if stage.get("type") != "ByteLevel" or stage.get("add_prefix_space") or stage.get("use_regex", True):
        fail(f"{where}: expected a final ByteLevel stage with add_prefix_space false and use_regex false")


def detect_pre_tokenizer(pre: dict) -> int:
    where = "tokenizer.json pre_tokenizer"
    pats, rest = split_patterns(pre, where)
    if pats == V3_SPLITS:
        if len(rest) != 1:
            fail(f"{where}: DeepSeek-V3 splits must be followed by exactly one ByteLevel stage")
        check_byte_level(rest[0], where)
        return PRETOK_V3
    # V2 regexes are written with \u escapes in the file; compare them after expanding the escapes.
    if [expand_escapes(p) for p in pats] == [expand_escapes(p) for p in V2_SPLITS]:
        if len(rest) != 2 or rest[0].get("type") != "Digits" or rest[0].get("individual_digits") is not True:
            fail(f"{where}: DeepSeek-V2 splits must be followed by Digits(individual_digits=true) and ByteLevel")
        check_byte_level(rest[1], where)
        return PRETOK_V2
    fail(f"{where}: not one of the supported pre-tokenizers (DeepSeek-V3 or DeepSeek-V2, spec §6.1/§6.2)")
    return 0


def expand_escapes(p: str) -> str:
    """Turn \\uXXXX and \\UXXXXXXXX escapes into characters, leave every other escape alone."""
    out, i = [], 0
    while i < len(p):
        if p[i] == "\\" and i + 1 < len(p):
            if p[i + 1] == "u" and i + 6 <= len(p):
                out.append(chr(int(p[i + 2:i + 6], 16)))
                i += 6
                continue
            if p[i + 1] == "U" and i + 10 <= len(p):
                out.append(chr(int(p[i + 2:i + 10], 16)))
                i += 10
                continue
            out.append(p[i:i + 2])
            i += 2
            continue
        out.append(p[i])
        i += 1
    return "".join(out)


def check_model_and_normalizer(tj: dict) -> None:
    m = tj.get("model")
    if not isinstance(m, dict):
        fail("tokenizer.json: no model object")
    if m.get("type") != "BPE":
        fail(f"tokenizer.json: model type must be BPE (got {m.get('type')})")
    if m.get("byte_fallback") or m.get("dropout") not in (None, 0, 0.0) or m.get("ignore_merges"):
        fail("tokenizer.json: BPE byte_fallback, dropout and ignore_merges are not supported")
    if m.get("continuing_subword_prefix") or m.get("end_of_word_suffix"):
        fail("tokenizer.json: BPE continuing_subword_prefix/end_of_word_suffix are not supported")
    norm = tj.get("normalizer")
    if norm is not None and not (norm.get("type") == "Sequence" and not norm.get("normalizers")):
        fail(f"tokenizer.json: only an empty normalizer is supported (got {norm.get('type')})")


def chat_family(template: Optional[str]) -> int:
    """Which fixed chat rendering (spec §6.5) the template string is."""
    if not template:
        return CHAT_RAW
    if "<｜Assistant｜>" in template:
        if "thinking" in template and "</think>" in template:
            return CHAT_V3_1
        if "<think>" in template:
            return CHAT_R1
        return CHAT_V3
    if "'User: '" in template and "Assistant:" in template:
        return CHAT_V2
    print("export.py: warning: unrecognised chat_template, chat mode will not be available", file=sys.stderr)
    return CHAT_RAW


def token_content(tok) -> Optional[str]:
    if tok is None or isinstance(tok, str):
        return tok
    return tok.get("content")


def read_chat_template(hf_dir: str, cfg: dict) -> Optional[str]:
    t = cfg.get("chat_template")
    if isinstance(t, list):  # [{"name": ..., "template": ...}, ...]
        named = {d.get("name"): d.get("template") for d in t}
        t = named.get("default")
    jinja = os.path.join(hf_dir, "chat_template.jinja")
    if t is None and os.path.exists(jinja):
        with open(jinja, encoding="utf-8") as f:
            t = f.read()
    return t


def tokenizer_blob(hf_dir: str) -> Optional[bytes]:
    """The tokenizer to embed in a model file, or None if hf_dir has no tokenizer.json or one run.c cannot
    reproduce exactly (then the model exports without text support, with a warning saying why)."""
    try:
        return build_tokenizer(hf_dir)
    except ExportError as e:
        print(f"export.py: warning: tokenizer not supported, none embedded: {e}", file=sys.stderr)
        return None


def build_tokenizer(hf_dir: str) -> Optional[bytes]:
    """The tokenizer file for the checkpoint in hf_dir, or None if it has no tokenizer.json."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if not os.path.exists(path):
        return None
    tj = read_json(path, "tokenizer.json")
    cfg_path = os.path.join(hf_dir, "tokenizer_config.json")
    cfg = read_json(cfg_path, "tokenizer_config.json") if os.path.exists(cfg_path) else {}

    check_model_and_normalizer(tj)
    pretok = detect_pre_tokenizer(tj.get("pre_tokenizer"))

    vocab: dict[str, int] = tj["model"].get("vocab")
    added = tj.get("added_tokens") or []
    if not isinstance(vocab, dict) or not isinstance(tj["model"].get("merges"), list):
        fail("tokenizer.json: BPE model without a vocab object and a merges list")
    if not all(isinstance(i, int) for i in vocab.values()):
        fail("tokenizer.json: vocab ids must be integers")
    for a in added:
        if not isinstance(a, dict) or not isinstance(a.get("content"), str) or not isinstance(a.get("id"), int):
            fail("tokenizer.json: added_tokens entries need a string content and an integer id")
        if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            fail(f"tokenizer.json: added token {a['content']!r} uses lstrip/rstrip/single_word (unsupported)")
        if not a["content"]:
            fail("tokenizer.json: empty added token")
    ids = list(vocab.values()) + [a["id"] for a in added]
    if not ids or min(ids) < 0:
        fail("tokenizer.json: empty vocabulary or negative id")
    n_vocab = max(ids) + 1
    if n_vocab > (1 << 24):
        fail(f"tokenizer.json: {n_vocab} ids is too many")

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    tokens: list[bytes] = [b""] * n_vocab
    flags = [0] * n_vocab
    for s, i in vocab.items():
        if all(c in byte_of for c in s):
            tokens[i] = bytes(byte_of[c] for c in s)
            flags[i] |= FLAG_BPE
        else:  # HF's ByteLevel decoder falls back to the raw UTF-8 of such a token
            tokens[i] = s.encode("utf-8")
    for c in byte_of:
        if c not in vocab:
            fail(f"tokenizer.json: byte-level character {c!r} is missing from the vocab")
    contents = set()
    for a in added:
        i = a["id"]
        if a["content"] in contents:
            fail(f"tokenizer.json: duplicate added token {a['content']!r}")
        contents.add(a["content"])
        content = a["content"].encode("utf-8")
        if flags[i] & FLAG_BPE and tokens[i] != content:
            fail(f"tokenizer.json: added token {a['content']!r} reuses the id of a different BPE token")
        tokens[i] = content
        flags[i] |= FLAG_ADDED | (FLAG_SPECIAL if a.get("special") else 0)
        flags[i] |= FLAG_NORMALIZED if a.get("normalized", True) else 0

    # Merge rank = index in the list; HF builds a map, so a repeated pair keeps its last rank.
    ranked: dict[tuple[int, int], tuple[int, int]] = {}
    for rank, m in enumerate(tj["model"]["merges"]):
        parts = m.split(" ") if isinstance(m, str) else list(m)
        if len(parts) != 2:
            fail(f"tokenizer.json: bad merge {m!r}")
        a, b = parts
        if a not in vocab or b not in vocab or a + b not in vocab:
            fail(f"tokenizer.json: merge {m!r} refers to a token that is not in the vocab")
        ia, ib, ir = vocab[a], vocab[b], vocab[a + b]
        if not (flags[ia] & flags[ib] & flags[ir] & FLAG_BPE):
            fail(f"tokenizer.json: merge {m!r} uses a token that is not byte-level")
        ranked[(ia, ib)] = (rank, ir)
    merges = sorted((r, a, b, res) for (a, b), (r, res) in ranked.items())

    def token_id(tok) -> int:
        c = token_content(tok)
        if c is None:
            return -1
        for a in added:
            if a["content"] == c:
                return a["id"]
        if c in vocab:
            return vocab[c]
        fail(f"tokenizer_config.json: token {c!r} is not in the vocabulary")
        return -1

    bos_id = token_id(cfg.get("bos_token"))
    eos_id = token_id(cfg.get("eos_token"))
    cfg_flags = (1 if cfg.get("add_bos_token", False) else 0) | (2 if cfg.get("add_eos_token", False) else 0)
    if cfg_flags & 1 and bos_id < 0:
        fail("tokenizer_config.json: add_bos_token is true but there is no bos_token")
    template = read_chat_template(hf_dir, cfg)
    family = chat_family(template)
    tbytes = (template or "").encode("utf-8")

    pool = b"".join(tokens)
    offsets = [0]
    for t in tokens:
        offsets.append(offsets[-1] + len(t))
    out = [TOKENIZER_MAGIC, struct.pack("<IIIIiiIIIII", TOKENIZER_VERSION, n_vocab, len(merges), len(added),
                                        bos_id, eos_id, cfg_flags, pretok, family, len(tbytes), len(pool))]
    out.append(struct.pack(f"<{n_vocab + 1}I", *offsets))
    out.append(bytes(flags))
    out.append(pool)
    out.append(b"".join(struct.pack("<III", a, b, r) for _, a, b, r in merges))
    out.append(struct.pack(f"<{len(added)}I", *[a["id"] for a in added]))
    out.append(tbytes)
    return b"".join(out)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def count_tokens(hf_dir: str, vocab_size: int) -> int:
    """n_tokens = 1 + the largest id in tokenizer.json (model.vocab and added_tokens); without
    a tokenizer.json every row of the embedding counts. Ids >= n_tokens are padding rows."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if not os.path.exists(path):
        return vocab_size
    tok = read_json(path, "tokenizer.json")
    vocab = (tok.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, dict):      # BPE / WordPiece: token -> id
        ids = [i for i in vocab.values() if isinstance(i, int)]
    elif isinstance(vocab, list):    # Unigram: [[piece, score], ...], id = position
        ids = [len(vocab) - 1] if vocab else []
    else:
        fail(f"tokenizer.json: unexpected model.vocab of type {type(vocab).__name__}")
    ids += [t.get("id") for t in tok.get("added_tokens") or []
            if isinstance(t, dict) and isinstance(t.get("id"), int)]
    if not ids:
        return vocab_size
    n_tokens = 1 + max(ids)
    if n_tokens > vocab_size:
        print(f"export.py: warning: tokenizer.json has ids up to {n_tokens - 1} but vocab_size "
              f"is {vocab_size}; using n_tokens = {vocab_size}", file=sys.stderr)
        n_tokens = vocab_size
    return n_tokens


# ----------------------------------------------------------------------------------------------
# safetensors reading


@dataclass
class SourceTensor:
    """One tensor inside a safetensors file."""
    name: str
    path: str
    dtype: str
    shape: tuple
    start: int    # absolute offset of the data in the file
    nbytes: int


def read_safetensors_header(path: str) -> dict:
    """Parse and validate the header; returns name -> SourceTensor. Every range is checked
    against the file size, so a truncated file or a lying header is caught here."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                fail(f"{path}: not a safetensors file (only {size} bytes)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len < 2 or header_len > MAX_HEADER_BYTES or 8 + header_len > size:
                fail(f"{path}: bad safetensors header length {header_len} (file has {size} bytes;"
                     f" truncated or not a safetensors file)")
            header_bytes = f.read(header_len)
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror or e}")
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(f"{path}: safetensors header is not valid JSON ({e})")
    if not isinstance(header, dict):
        fail(f"{path}: safetensors header is not a JSON object")
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = parse_header_entry(path, name, info, base, size)
    check_no_overlap(path, tensors)
    return tensors


def parse_header_entry(path: str, name: str, info, base: int, size: int) -> SourceTensor:
    where = f"{path}: tensor {name}"
    if not isinstance(info, dict):
        fail(f"{where}: header entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        fail(f"{where}: missing dtype")
    if (not isinstance(shape, list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        fail(f"{where}: bad shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        fail(f"{where}: bad data_offsets {offsets!r}")
    start, end = base + offsets[0], base + offsets[1]
    if end > size:
        fail(f"{where}: data ends at byte {end} but the file has only {size} bytes "
             f"(truncated file or bad offsets)")
    itemsize = SOURCE_ITEMSIZE.get(dtype, OTHER_ITEMSIZE.get(dtype))
    if itemsize is not None and math.prod(shape) * itemsize != end - start:
        fail(f"{where}: {dtype}{shape} needs {math.prod(shape) * itemsize} bytes but "
             f"data_offsets give {end - start}")
    return SourceTensor(name, path, dtype, tuple(shape), start, end - start)


def check_no_overlap(path: str, tensors: dict) -> None:
    spans = sorted((t.start, t.start + t.nbytes, t.name) for t in tensors.values() if t.nbytes)
    for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
        if start_b < end_a:
            fail(f"{path}: tensors {name_a} and {name_b} overlap in the file")


def shard_path(hf_dir: str, filename) -> str:
    if not isinstance(filename, str) or os.path.basename(filename) != filename or not filename:
        fail(f"model.safetensors.index.json: bad shard file name {filename!r}")
    return os.path.join(hf_dir, filename)


def load_checkpoint(hf_dir: str) -> dict:
    """All tensors of the checkpoint, name -> SourceTensor (headers only, no data)."""
    index_path = os.path.join(hf_dir, "model.safetensors.index.json")
    single_path = os.path.join(hf_dir, "model.safetensors")
    if not os.path.exists(index_path):
        if not os.path.exists(single_path):
            fail(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")
        return read_safetensors_header(single_path)
    weight_map = read_json(index_path, "model.safetensors.index.json").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        fail(f"{index_path}: missing or empty weight_map")
    shards = {}
    for filename in sorted(set(weight_map.values()), key=str):
        path = shard_path(hf_dir, filename)
        if not os.path.isfile(path):
            fail(f"missing shard {filename} (listed in model.safetensors.index.json)")
        shards[filename] = read_safetensors_header(path)
    tensors = {}
    for name, filename in weight_map.items():
        if name not in shards[filename]:
            fail(f"model.safetensors.index.json puts {name} in {filename}, but it is not there")
    for filename, shard in shards.items():
        for name, tensor in shard.items():
            if name in tensors:
                fail(f"tensor {name} appears in two shards ({tensors[name].path}, {filename})")
            tensors[name] = tensor
    return tensors


# ----------------------------------------------------------------------------------------------
# the canonical tensor order (team brief, "Tensor order")


def is_moe_layer(c: dict, layer: int) -> bool:
    return (c["n_routed_experts"] > 0 and layer >= c["first_k_dense_replace"]
            and layer % c["moe_layer_freq"] == 0)


def layer_tensors(c: dict, layer: int) -> list:
    """[(name, shape, always_f32)] of one decoder layer. MTP layers (index >= n_layers) reuse
    this plus their extra tensors once they are stored (config word n_mtp_layers)."""
    D, H, r = c["dim"], c["n_heads"], c["kv_lora_rank"]
    rq, dn, dr, dv = c["q_lora_rank"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    P = f"model.layers.{layer}."
    out = [(P + "input_layernorm.weight", (D,), True)]
    if rq > 0:
        out += [(P + "self_attn.q_a_proj.weight", (rq, D), False),
                (P + "self_attn.q_a_layernorm.weight", (rq,), True),
                (P + "self_attn.q_b_proj.weight", (H * (dn + dr), rq), False)]
    else:
        out += [(P + "self_attn.q_proj.weight", (H * (dn + dr), D), False)]
    out += [(P + "self_attn.kv_a_proj_with_mqa.weight", (r + dr, D), False),
            (P + "self_attn.kv_a_layernorm.weight", (r,), True),
            (P + "self_attn.kv_b_proj.weight", (H * (dn + dv), r), False),
            (P + "self_attn.o_proj.weight", (D, H * dv), False),
            (P + "post_attention_layernorm.weight", (D,), True)]
    if is_moe_layer(c, layer):
        E, S, Ie = c["n_routed_experts"], c["n_shared_experts"], c["moe_intermediate_size"]
        out += [(P + "mlp.gate.weight", (E, D), True)]  # the router runs in fp32
        if c["topk_method"] == TOPK_METHODS["noaux_tc"]:
            out += [(P + "mlp.gate.e_score_correction_bias", (E,), True)]
        for e in range(E):
            out += [(P + f"mlp.experts.{e}.gate_proj.weight", (Ie, D), False),
                    (P + f"mlp.experts.{e}.up_proj.weight", (Ie, D), False),
                    (P + f"mlp.experts.{e}.down_proj.weight", (D, Ie), False)]
        if S > 0:
            out += [(P + "mlp.shared_experts.gate_proj.weight", (S * Ie, D), False),
                    (P + "mlp.shared_experts.up_proj.weight", (S * Ie, D), False),
                    (P + "mlp.shared_experts.down_proj.weight", (D, S * Ie), False)]
    else:
        I = c["intermediate_size"]
        out += [(P + "mlp.gate_proj.weight", (I, D), False),
                (P + "mlp.up_proj.weight", (I, D), False),
                (P + "mlp.down_proj.weight", (D, I), False)]
    return out


def model_tensors(c: dict) -> list:
    V, D = c["vocab_size"], c["dim"]
    out = [("model.embed_tokens.weight", (V, D), False)]
    for layer in range(c["n_layers"]):
        out += layer_tensors(c, layer)
    out += [("model.norm.weight", (D,), True), ("lm_head.weight", (V, D), False)]
    return out


# ----------------------------------------------------------------------------------------------
# export plan: every output tensor with its source, type, offset and size


@dataclass
class OutTensor:
    name: str
    type: int
    shape: tuple                          # (n,) or (rows, cols)
    source: Optional[SourceTensor] = None
    scale: Optional[SourceTensor] = None  # FP8 block scales (multiplied)
    data: Optional[bytes] = None          # raw bytes (the tokenizer blob)
    offset: int = 0
    nbytes: int = 0


LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old checkpoints saved; recomputed
SCALE_SUFFIX = "_scale_inv"


def is_skipped(c: dict, name: str) -> bool:
    """Tensors of layers >= n_layers (the MTP module, spec §2.2) are not stored yet."""
    m = LAYER_RE.match(name)
    return (m is not None and int(m.group(1)) >= c["n_layers"]) or name.endswith(IGNORED_SUFFIXES)


def check_names(c: dict, wanted: dict, tensors: dict) -> None:
    """Every checkpoint tensor must be used, be an FP8 scale of a used tensor, or be skipped."""
    for name in tensors:
        if name in wanted or is_skipped(c, name):
            continue
        if name.endswith(SCALE_SUFFIX) and name[:-len(SCALE_SUFFIX)] in wanted:
            continue
        fail(f"unknown tensor {name} in {tensors[name].path} (not part of a {c['n_layers']}-layer"
             f" DeepSeek model as described by config.json)")


def plan_tensor(name: str, shape: tuple, always_f32: bool, out_type: int,
                tensors: dict, c: dict) -> OutTensor:
    source = tensors.get(name)
    if source is None and name == "lm_head.weight" and c["tie_word_embeddings"]:
        source = tensors.get("model.embed_tokens.weight")
    if source is None:
        fail(f"missing tensor {name} (expected shape {list(shape)})")
    if source.dtype not in SOURCE_ITEMSIZE:
        fail(f"tensor {name} has unsupported dtype {source.dtype} "
             f"(supported: {', '.join(SOURCE_ITEMSIZE)})")
    if source.shape != shape:
        fail(f"tensor {name} has shape {list(source.shape)}, expected {list(shape)}")
    scale = tensors.get(name + SCALE_SUFFIX)
    if source.dtype == "F8_E4M3":
        scale = check_fp8_scale(name, shape, scale)
    elif scale is not None:
        fail(f"tensor {name} is {source.dtype} but has a {SCALE_SUFFIX} companion")
    ttype = F32 if always_f32 or len(shape) == 1 else out_type
    return OutTensor(name, ttype, shape, source, scale)


def check_fp8_scale(name: str, shape: tuple, scale: Optional[SourceTensor]) -> SourceTensor:
    if len(shape) != 2:
        fail(f"tensor {name}: FP8 is only supported for 2-D weights")
    if scale is None:
        fail(f"FP8 tensor {name} has no {name}{SCALE_SUFFIX}")
    blocks = (-(-shape[0] // FP8_BLOCK), -(-shape[1] // FP8_BLOCK))
    if scale.shape != blocks:
        fail(f"{name}{SCALE_SUFFIX} has shape {list(scale.shape)}, expected {list(blocks)} "
             f"({FP8_BLOCK}x{FP8_BLOCK} blocks)")
    if scale.dtype not in ("F32", "BF16", "F16"):
        fail(f"{name}{SCALE_SUFFIX} has unsupported dtype {scale.dtype}")
    return scale


def plan_export(c: dict, tensors: dict, out_type: int, blob: Optional[bytes]) -> list:
    expected = model_tensors(c)
    wanted = {name: shape for name, shape, _ in expected}
    check_names(c, wanted, tensors)
    plan = [plan_tensor(name, shape, f32, out_type, tensors, c) for name, shape, f32 in expected]
    if blob is not None:
        plan.append(OutTensor("tokenizer", U8, (len(blob),), data=blob))
    for t in plan:
        t.nbytes = tensor_nbytes(t.type, t.shape)
    return plan


def tensor_nbytes(ttype: int, shape: tuple) -> int:
    if ttype in BLOCK_BYTES:
        return shape[0] * -(-shape[1] // QUANT_GROUP) * BLOCK_BYTES[ttype]
    return math.prod(shape) * TYPE_SIZE[ttype]


def assign_offsets(plan: list) -> int:
    """Lay the data out after the header, each tensor 64-byte aligned; returns the file size."""
    pos = 12 + 4 * N_CONFIG + 4 + ENTRY_BYTES * len(plan)
    for t in plan:
        pos = -(-pos // ALIGN) * ALIGN
        t.offset = pos
        pos += t.nbytes
    return pos


# ----------------------------------------------------------------------------------------------
# header bytes


def pack_config(c: dict) -> bytes:
    out = bytearray()
    for key, kind in CONFIG_WORDS:
        value = c[key]
        if kind == "i" and not -2**31 <= value < 2**31:
            fail(f"config value {key} = {value} does not fit in int32")
        out += struct.pack("<" + kind, value)
    return bytes(out)


def pack_entry(t: OutTensor) -> bytes:
    name = t.name.encode("utf-8")
    if len(name) >= NAME_BYTES:
        fail(f"tensor name too long for the file format: {t.name}")
    rows, cols = (t.shape[0], 1) if len(t.shape) == 1 else t.shape
    if rows >= 2**32 or cols >= 2**32:
        fail(f"tensor {t.name}: dimension too large for the file format")
    return struct.pack("<96sIIIIQQ", name, t.type, len(t.shape), rows, cols, t.offset, t.nbytes)


def pack_header(c: dict, plan: list) -> bytes:
    head = MAGIC + struct.pack("<II", VERSION, N_CONFIG) + pack_config(c)
    head += struct.pack("<I", len(plan)) + b"".join(pack_entry(t) for t in plan)
    return head


# ----------------------------------------------------------------------------------------------
# tensor data: decode, dequantise, convert; a block of rows at a time


def fp8_e4m3_table() -> np.ndarray:
    """float8_e4m3fn byte -> float32 (spec §2.3): no infinities, 0x7f/0xff are NaN."""
    b = np.arange(256)
    sign, exp, man = b >> 7, (b >> 3) & 15, b & 7
    mag = np.where(exp == 0, np.ldexp(man / 8.0, -6), np.ldexp(1.0 + man / 8.0, exp - 7))
    value = np.where(sign == 1, -mag, mag)
    value[(exp == 15) & (man == 7)] = np.nan
    return value.astype(np.float32)


FP8_TABLE = fp8_e4m3_table()
NUMPY_DTYPE = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
               "F8_E4M3": np.dtype("u1")}


def read_raw(f: BinaryIO, t: SourceTensor, first_row: int, n_rows: int) -> bytes:
    row_bytes = t.nbytes // t.shape[0] if t.shape and t.shape[0] else 0
    f.seek(t.start + first_row * row_bytes)
    data = f.read(n_rows * row_bytes)
    if len(data) != n_rows * row_bytes:
        fail(f"{t.path}: unexpected end of file while reading {t.name} (file changed?)")
    return data


def decode(raw: bytes, dtype: str, shape: tuple) -> np.ndarray:
    """Source bytes -> float32 array of `shape`."""
    x = np.frombuffer(raw, dtype=NUMPY_DTYPE[dtype]).reshape(shape)
    if dtype == "F32":
        return x
    if dtype == "F16":
        return x.astype(np.float32)
    if dtype == "BF16":  # bf16 is the high half of an fp32 word
        return (x.astype(np.uint32) << 16).view(np.float32)
    return FP8_TABLE[x]


def block_scales(scale: np.ndarray, first_row: int, n_rows: int, n_cols: int) -> np.ndarray:
    """Per-element scale for rows [first_row, first_row + n_rows): S[i // 128][j // 128].
    first_row is a multiple of 128; edge blocks are partial."""
    b0 = first_row // FP8_BLOCK
    b1 = -(-(first_row + n_rows) // FP8_BLOCK)
    s = np.repeat(np.repeat(scale[b0:b1], FP8_BLOCK, axis=0), FP8_BLOCK, axis=1)
    return s[:n_rows, :n_cols]


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((u[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def quant_groups(x: np.ndarray) -> np.ndarray:
    """(n, cols) -> (n, nb, 32): the row's groups, the last one zero-padded."""
    n, cols = x.shape
    nb = -(-cols // QUANT_GROUP)
    padded = np.zeros((n, nb * QUANT_GROUP), dtype=np.float32)
    padded[:, :cols] = x
    return padded.reshape(n, nb, QUANT_GROUP)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def quantize(x: np.ndarray, ttype: int) -> bytes:
    """(n, cols) float32 rows -> Q8 or Q4 blocks (layout in the module docstring)."""
    g = quant_groups(x)
    if ttype == Q8:
        d_bits = to_bf16(np.abs(g).max(axis=2) / 127.0)
        d = bf16_bits_to_f32(d_bits)
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
        q = np.clip(np.rint(g * inv[..., None]), -127, 127).astype(np.int8).view(np.uint8)
    else:
        idx = np.abs(g).argmax(axis=2)[..., None]
        m = np.take_along_axis(g, idx, axis=2)[..., 0]  # signed value of largest magnitude
        d_bits = to_bf16(m / -8.0)
        d = bf16_bits_to_f32(d_bits)
        inv = np.divide(1.0, d, out=np.zeros_like(d), where=d != 0)
        q = np.clip(np.rint(g * inv[..., None]) + 8, 0, 15).astype(np.uint8)
        half = QUANT_GROUP // 2
        q = q[..., :half] | (q[..., half:] << 4)
    blocks = np.concatenate([d_bits.astype("<u2").view(np.uint8).reshape(*d.shape, 2), q], axis=2)
    return blocks.tobytes()


def dequantize(raw: bytes, ttype: int, rows: int, cols: int) -> np.ndarray:
    """Inverse of quantize (for tests and tools): Q8/Q4 bytes -> (rows, cols) float32."""
    nb = -(-cols // QUANT_GROUP)
    b = np.frombuffer(raw, dtype=np.uint8).reshape(rows, nb, BLOCK_BYTES[ttype])
    d = bf16_bits_to_f32(np.ascontiguousarray(b[..., :2]).view("<u2")[..., 0])
    if ttype == Q8:
        q = b[..., 2:].view(np.int8).astype(np.float32)
    else:
        lo, hi = b[..., 2:] & 15, b[..., 2:] >> 4
        q = np.concatenate([lo, hi], axis=2).astype(np.float32) - 8
    return (q * d[..., None]).reshape(rows, nb * QUANT_GROUP)[:, :cols]


def rows_per_chunk(t: OutTensor) -> int:
    cols = t.shape[1] if len(t.shape) == 2 else 1
    rows = max(1, CHUNK_ELEMENTS // cols)
    if t.scale is not None:  # whole FP8 row blocks per chunk
        rows = max(FP8_BLOCK, rows // FP8_BLOCK * FP8_BLOCK)
    return rows


def tensor_chunks(t: OutTensor) -> Iterator[bytes]:
    """The output bytes of one tensor, a block of rows at a time."""
    if t.data is not None:
        yield t.data
        return
    src = t.source
    rows = t.shape[0]
    cols = t.shape[1] if len(t.shape) == 2 else 1
    copy_bits = t.type == BF16 and src.dtype == "BF16" and t.scale is None
    scale = None
    if t.scale is not None:
        with open(t.scale.path, "rb") as f:
            raw = read_raw(f, t.scale, 0, t.scale.shape[0])
        scale = decode(raw, t.scale.dtype, t.scale.shape)
    step = rows_per_chunk(t)
    with open(src.path, "rb") as f:
        for r0 in range(0, rows, step):
            n = min(step, rows - r0)
            raw = read_raw(f, src, r0, n)
            if copy_bits:  # bf16 -> bf16 is a bit-exact copy
                yield raw
                continue
            x = decode(raw, src.dtype, (n, cols))
            if scale is not None:
                x = x * block_scales(scale, r0, n, cols)  # DeepSeek's scale_inv is multiplied
            if t.type in BLOCK_BYTES:
                yield quantize(x, t.type)
            else:
                yield (x.astype("<f4", copy=False) if t.type == F32 else to_bf16(x)).tobytes()


# ----------------------------------------------------------------------------------------------
# output


class Progress:
    """A line on stderr every few seconds: tensors and bytes done."""

    def __init__(self, n_tensors: int, total_bytes: int):
        self.n_tensors, self.total = n_tensors, total_bytes
        self.start = self.last = time.monotonic()

    def update(self, tensors_done: int, bytes_done: int) -> None:
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            print(f"export: {tensors_done}/{self.n_tensors} tensors, "
                  f"{bytes_done / 1e9:.2f}/{self.total / 1e9:.2f} GB, {now - self.start:.0f} s",
                  file=sys.stderr, flush=True)


def write_atomically(path: str, write) -> None:
    """Call write(f) on a temporary file next to `path`, then rename it to `path`. On any
    error (or Ctrl-C) the temporary file is removed and `path` is left untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        fail(f"output path is a directory: {path}")
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".",
                                   suffix=".tmp")
    except OSError as e:
        fail(f"cannot create a file in {directory}: {e.strerror or e}")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_model(f: BinaryIO, header: bytes, plan: list, file_size: int) -> None:
    f.write(header)
    pos = len(header)
    progress = Progress(len(plan), file_size)
    for i, t in enumerate(plan):
        f.write(b"\0" * (t.offset - pos))
        written = 0
        for chunk in tensor_chunks(t):
            f.write(chunk)
            written += len(chunk)
            progress.update(i, t.offset + written)
        if written != t.nbytes:
            fail(f"internal error: wrote {written} bytes for {t.name}, expected {t.nbytes}")
        pos = t.offset + t.nbytes
    if pos != file_size:
        fail(f"internal error: file size {pos}, expected {file_size}")


def export_model(hf_dir: str, out_path: str, dtype: str) -> None:
    c = load_config(hf_dir)
    tensors = load_checkpoint(hf_dir)
    blob = tokenizer_blob(hf_dir)
    c["n_tokens"] = count_tokens(hf_dir, c["vocab_size"])
    if blob is not None:
        h = fnv1a64(blob)
        c["tokenizer_hash_lo"], c["tokenizer_hash_hi"] = h & 0xFFFFFFFF, h >> 32
    plan = plan_export(c, tensors, DTYPES[dtype], blob)
    file_size = assign_offsets(plan)
    header = pack_header(c, plan)
    start = time.monotonic()
    write_atomically(out_path, lambda f: write_model(f, header, plan, file_size))
    print(f"export: wrote {out_path}: {len(plan)} tensors, {file_size / 1e6:.1f} MB, {dtype}, "
          f"{time.monotonic() - start:.1f} s", file=sys.stderr)


def export_tokenizer(hf_dir: str, out_path: str) -> None:
    blob = tokenizer_blob(hf_dir)
    if blob is None:
        fail(f"no tokenizer could be exported from {hf_dir}")
    write_atomically(out_path, lambda f: f.write(blob))


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="export.py",
        description="Export a HuggingFace DeepSeek-V2/V3 checkpoint to a seek.c model file.")
    parser.add_argument("hf_dir", help="directory with config.json and *.safetensors")
    parser.add_argument("out", help="output file (model.bin, or tokenizer.bin with --tokenizer)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="f32",
                        help="type of the 2-D weight matrices except the router (default f32)")
    parser.add_argument("--tokenizer", action="store_true",
                        help="write only the tokenizer file")
    args = parser.parse_args()
    try:
        if not os.path.isdir(args.hf_dir):
            fail(f"not a directory: {args.hf_dir}")
        if args.tokenizer:
            export_tokenizer(args.hf_dir, args.out)
        else:
            export_model(args.hf_dir, args.out, args.dtype)
    except ExportError as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"export.py: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    except MemoryError:
        print("export.py: error: out of memory", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("export.py: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
