#!/usr/bin/env python3
"""
Export a HuggingFace DeepSeek-V2/V3/V3.2 checkpoint (or one of a family with their graph: GLM-4.7-Flash,
Moonlight, Kimi-K2) to one seek.c model file (format v2).

    python3 export.py <hf_dir> <out.bin> [--dtype f32|bf16|q8|q4] [--mtp]
    python3 export.py --tokenizer <hf_dir> <tokenizer.bin>

Python 3 + numpy only: safetensors is parsed here (8-byte little-endian header length, a JSON
header, then raw data whose offsets are relative to the end of the header). Tensors are streamed
a block of rows at a time, so memory use does not grow with the model size.

File layout (all little-endian): "SEEK", u32 version (2), u32 n_config (64), n_config 4-byte config
words (CONFIG_WORDS), u32 n_tensors, n_tensors 128-byte table entries (name[96], type, ndim, rows, cols,
u64 offset, u64 nbytes), then each tensor's data at a 64-byte aligned offset, in table order. Version 1
(which run.c still reads) had 40 config words: the first 38 of version 2 and two unused ones.

Quantized weights (--dtype q8|q4; 2-D matrices only, the router stays F32 like every 1-D tensor).
Each row of a [rows, cols] matrix is cut into nb = ceil(cols / 32) blocks of 32 consecutive values;
the last block of a row whose length is not a multiple of 32 is padded with zeros (quantized to 0,
so it adds nothing to a dot product). A block is a bf16 scale d and its q bytes:
  Q8: 32 x int8 q; value = d * q, q in -127..127 (d = absmax / 127)
  Q4: 16 bytes; byte j holds q_j in its low nibble and q_{j+16} in its high nibble;
      value = d * (q - 8), q in 0..15 (d = -m / 8 where m is the value of largest magnitude, so m
      itself is exactly -8 d)
bf16 scales (round to nearest even) cost a shift to decode; the values are quantized with the
rounded scale, so the scale's rounding adds no error of its own. Rows are interleaved 16 at a time
for run.c's vector kernels (a panel; the last panel of a matrix is padded with zero rows). A panel
holds the 16 rows' scales for block 0, block 1, ... (16 x nb bf16), then for each block the rows' q
bytes in 4-byte pieces: piece j of row k at 64 j + 4 k. So nbytes = ceil(rows / 16) * 16 * nb * 34
(type 4 Q8) or * 18 (type 5 Q4). Version 1's types 2 and 3 held the same blocks row after row, each
scale before its q bytes.
"""
from __future__ import annotations

import argparse
import ast
import base64
import binascii
import contextlib
import json
import math
import glob
import os
import re
import signal
import stat
import string
import struct
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional

import numpy as np

MAGIC = b"SEEK"
VERSION = 2
ALIGN = 64
NAME_BYTES = 96
ENTRY_BYTES = 128

# tensor types in the model file
F32, BF16, Q8, Q4, U8 = 0, 1, 4, 5, 16
PANEL_ROWS = 16                    # rows interleaved in a Q8/Q4 matrix
TYPE_SIZE = {F32: 4, BF16: 2, U8: 1}
QK = 32                            # values per block (one scale), along a row
BLOCK_BYTES = {Q8: 2 + 32, Q4: 2 + 16}
DTYPES = {"f32": F32, "bf16": BF16, "q8": Q8, "q4": Q4}

SUPPORTED_MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "deepseek_v32", "kimi_k2", "glm4_moe_lite")
TOPK_METHODS = {"greedy": 0, "group_limited_greedy": 1, "noaux_tc": 2}
SCORING_FUNCS = {"softmax": 0, "sigmoid": 1}

# safetensors dtypes we can read, and their element sizes
SOURCE_ITEMSIZE = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1}
# sizes of other safetensors dtypes, only to validate headers; reading them is an error
OTHER_ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2,
                  "I8": 1, "U8": 1, "BOOL": 1, "F8_E5M2": 1, "F8_E8M0": 1}  # F8_E8M0: FP8 scales only

FP8_BLOCK = 128              # DeepSeek-V3 weight_block_size [128, 128]
CHUNK_ELEMENTS = 1 << 20     # elements per streamed block of rows (4 MB as f32)
PROGRESS_SECONDS = 5.0
MAX_HEADER_BYTES = 100 << 20  # real headers are well under 10 MB
MAX_JSON_BYTES = 100 << 20    # config, index and tokenizer files too


class ExportError(Exception):
    """A problem with the input that the user must fix; printed as one line."""


def fail(msg: str) -> None:
    raise ExportError(msg)


# ----------------------------------------------------------------------------------------------
# input files and JSON


def open_input(path: str, what: str) -> BinaryIO:
    """Open an input file for reading. Only a regular file is accepted: a FIFO, device or
    directory is refused before it is read (stat first, so a device is not even opened; then
    O_NONBLOCK, so that a FIFO swapped in meanwhile cannot block the open)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            fail(f"{what} {path} is not a regular file")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        fail(f"{what} not found: {path}")
    except OSError as e:
        fail(f"cannot open {what} {path}: {e.strerror or e}")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            fail(f"{what} {path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def describe(value) -> str:
    """A value for an error message: as JSON if it is short and flat, else its kind (a deeply
    nested or huge value is never printed)."""
    items = value if isinstance(value, list) else value.values() if isinstance(value, dict) else [value]
    if len(items) <= 8 and all(v is None or isinstance(v, (str, int, float)) for v in items):
        text = json.dumps(value, ensure_ascii=False)
        if len(text) <= 60:
            return text
        if not isinstance(value, (list, dict)):
            return text[:40] + f"... ({len(text)} characters)"
    return "a JSON array" if isinstance(value, list) else "a JSON object"


def has_lone_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def json_path(path: tuple) -> str:
    """("model", "vocab", "a") -> model.vocab["a"] (names a place in a JSON document)."""
    out = ""
    for k in path:
        if isinstance(k, int):
            out += f"[{k}]"
        elif k.isidentifier():
            out += f".{k}" if out else k
        else:
            out += f"[{describe(k)}]"
    return out or "the document"


def check_unicode(value, where: str) -> None:
    """JSON can escape half of a surrogate pair (\\ud800) on its own. That is no character and has
    no UTF-8 form (HF tokenizers, reading with serde_json, refuses such a file), so every string
    and key is checked; iteratively, as the document may be nested a thousand deep."""
    stack = [((), value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str) and has_lone_surrogate(v):
            fail(f"{where}: {json_path(path)}: the string {describe(v)} holds a lone surrogate "
                 f"(not valid Unicode)")
        elif isinstance(v, list):
            stack.extend((path + (k,), x) for k, x in enumerate(v))
        elif isinstance(v, dict):
            for k, x in v.items():
                if has_lone_surrogate(k):
                    fail(f"{where}: {json_path(path + (k,))}: the key holds a lone surrogate "
                         f"(not valid Unicode)")
                stack.append((path + (k,), x))


SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(data: bytes, where: str):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"{where}: not UTF-8 ({e.reason} at byte {e.start})")
    try:
        value = json.loads(text)
    except RecursionError:
        fail(f"{where}: JSON nested too deeply")
    except ValueError as e:  # JSONDecodeError, or an integer with more digits than Python converts
        fail(f"{where}: not valid JSON ({e})")
    if SURROGATE_ESCAPE.search(text):  # a lone surrogate can only come from an escape
        check_unicode(value, where)
    return value


def read_json(path: str, what: str) -> dict:
    with open_input(path, what) as f:
        try:
            data = f.read(MAX_JSON_BYTES + 1)
        except OSError as e:
            fail(f"cannot read {what} {path}: {e.strerror or e}")
    if len(data) > MAX_JSON_BYTES:
        fail(f"{what} {path} is larger than {MAX_JSON_BYTES >> 20} MB")
    value = parse_json(data, f"{what} {path}")
    if not isinstance(value, dict):
        fail(f"{what} {path}: expected a JSON object, got {describe(value)}")
    return value


# ----------------------------------------------------------------------------------------------
# config.json -> the config words
#
# Every field is read with its JSON type checked, ints to the format's int32 and floats to its
# float32 (so nothing can fail later when the words are packed), then check_config applies the
# limits run.c's validate_config applies to the file, with the config.json field named.

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
    ("tokenizer_hash_lo", "I"), ("tokenizer_hash_hi", "I"),
    ("index_n_heads", "i"), ("index_head_dim", "i"), ("index_topk", "i"),  # DeepSeek-V3.2's indexer
    ("eos_token_id_2", "i"), ("eos_token_id_3", "i"), ("eos_token_id_4", "i"),  # the rest of an eos list
] + [(f"reserved{k}", "i") for k in range(44, 64)]
N_CONFIG = len(CONFIG_WORDS)  # 64
EOS_WORDS = ("eos_token_id", "eos_token_id_2", "eos_token_id_3", "eos_token_id_4")

MAX_DIM = 1 << 24                 # run.c's MAX_DIM: bounds every dimension and derived product


def read_int(obj: dict, key: str, default: Optional[int], name: str) -> int:
    """obj[key] as an int32; `default` if absent or null (None: required)."""
    value = obj.get(key)
    if value is None:
        if default is None:
            fail(f"config.json: missing or null '{name}'")
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        fail(f"config.json: '{name}' must be an integer, got {describe(value)}")
    if not -2**31 <= value < 2**31:
        fail(f"config.json: '{name}' = {describe(value)} does not fit the model file's int32")
    return value


def read_float(obj: dict, key: str, default: Optional[float], name: str) -> float:
    """obj[key] rounded to float32 (as a Python float); `default` if absent or null."""
    value = obj.get(key)
    if value is None:
        if default is None:
            fail(f"config.json: missing or null '{name}'")
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f"config.json: '{name}' must be a number, got {describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        fail(f"config.json: '{name}' = {value} is not a finite number")
    try:
        return struct.unpack("<f", struct.pack("<f", float(value)))[0]
    except OverflowError:
        fail(f"config.json: '{name}' = {describe(value)} does not fit the model file's float32")


def read_bool(obj: dict, key: str, default: bool, name: str) -> int:
    value = obj.get(key)
    if value is None:
        return int(default)
    if not isinstance(value, bool):
        fail(f"config.json: '{name}' must be true or false, got {describe(value)}")
    return int(value)


def read_choice(obj: dict, key: str, choices: dict, default: str, name: str) -> int:
    value = obj.get(key)
    if value is None:
        value = default
    if not isinstance(value, str) or value not in choices:
        fail(f"config.json: unsupported {name} {describe(value)} (supported: {', '.join(choices)})")
    return choices[value]


def read_token_ids(obj: dict, key: str, where: str = "config.json") -> list:
    """bos/eos may be absent or null ([]), an int, or a list of ints."""
    value = obj.get(key)
    values = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        fail(f"{where}: '{key}' must be an integer or a list of integers, got {describe(value)}")
    return [read_int({key: v}, key, None, key) for v in values]


def read_token_id(obj: dict, key: str) -> int:
    """The first id of read_token_ids, or -1."""
    ids = read_token_ids(obj, key)
    return ids[0] if ids else -1


def read_eos_ids(hf_dir: str, raw: dict) -> list:
    """Every id that ends generation: config.json's eos_token_id (GLM's is a list of three: <|endoftext|>,
    <|user|>, <|observation|>), then those generation_config.json adds, which HF's generate() uses. The
    format has room for four."""
    ids = read_token_ids(raw, "eos_token_id")
    path = os.path.join(hf_dir, "generation_config.json")
    if os.path.lexists(path):
        ids += read_token_ids(read_json(path, "generation_config.json"), "eos_token_id", "generation_config.json")
    ids = list(dict.fromkeys(ids))
    if len(ids) > len(EOS_WORDS):
        fail(f"config.json: {len(ids)} eos token ids {describe(ids)}; the model file holds at most {len(EOS_WORDS)}")
    return ids + [-1] * (len(EOS_WORDS) - len(ids))


# config word <- config.json key, type, default when absent or null (None: required).
# A type is "int", "float", "bool" or a dict of the accepted strings.
CONFIG_FIELDS = [
    ("dim", "hidden_size", "int", None),
    ("n_layers", "num_hidden_layers", "int", None),
    ("vocab_size", "vocab_size", "int", None),
    ("n_heads", "num_attention_heads", "int", None),
    ("q_lora_rank", "q_lora_rank", "int", 0),
    ("kv_lora_rank", "kv_lora_rank", "int", None),
    ("qk_nope_head_dim", "qk_nope_head_dim", "int", None),
    ("qk_rope_head_dim", "qk_rope_head_dim", "int", None),
    ("v_head_dim", "v_head_dim", "int", None),
    ("intermediate_size", "intermediate_size", "int", None),
    ("moe_intermediate_size", "moe_intermediate_size", "int", 0),
    ("n_routed_experts", "n_routed_experts", "int", 0),
    ("n_shared_experts", "n_shared_experts", "int", 0),
    ("num_experts_per_tok", "num_experts_per_tok", "int", 0),
    ("n_group", "n_group", "int", 1),
    ("topk_group", "topk_group", "int", 1),
    ("topk_method", "topk_method", TOPK_METHODS, "greedy"),
    ("scoring_func", "scoring_func", SCORING_FUNCS, "softmax"),
    ("norm_topk_prob", "norm_topk_prob", "bool", False),
    ("routed_scaling_factor", "routed_scaling_factor", "float", 1.0),
    ("first_k_dense_replace", "first_k_dense_replace", "int", 0),
    ("moe_layer_freq", "moe_layer_freq", "int", 1),
    ("rms_norm_eps", "rms_norm_eps", "float", 1e-6),
    ("max_position_embeddings", "max_position_embeddings", "int", None),
]

# YaRN words <- keys of rope_scaling / rope_parameters. Absent keys take the HF remote code's
# defaults (DeepseekV2YarnRotaryEmbedding in modeling_deepseek.py: beta_fast 32, beta_slow 1,
# mscale 1, mscale_all_dim 0, so cos/sin get 0.1 ln(s) + 1 and the softmax no factor);
# original_max_position_embeddings defaults to max_position_embeddings.
YARN_FIELDS = [
    ("rope_factor", "factor", "float", 1.0),
    ("rope_original_max_pos", "original_max_position_embeddings", "int", None),
    ("rope_beta_fast", "beta_fast", "float", 32.0),
    ("rope_beta_slow", "beta_slow", "float", 1.0),
    ("rope_mscale", "mscale", "float", 1.0),
    ("rope_mscale_all_dim", "mscale_all_dim", "float", 0.0),
]
NO_ROPE_SCALING = dict(rope_type=0, rope_factor=1.0, rope_original_max_pos=0, rope_beta_fast=0.0,
                       rope_beta_slow=0.0, rope_mscale=0.0, rope_mscale_all_dim=0.0)


def read_field(obj: dict, key: str, kind, default, name: str):
    if kind == "int":
        return read_int(obj, key, default, name)
    if kind == "float":
        return read_float(obj, key, default, name)
    if kind == "bool":
        return read_bool(obj, key, default, name)
    return read_choice(obj, key, kind, default, name)


def read_fields(c: dict, obj: dict, fields: list, prefix: str = "") -> None:
    """Fill c[word] from obj for each field; c["source"][word] names the field for messages."""
    for word, key, kind, default in fields:
        if word == "rope_original_max_pos" and default is None:
            default = c["max_position_embeddings"]
        c[word] = read_field(obj, key, kind, default, prefix + key)
        c["source"][word] = prefix + key


def read_rope(c: dict, raw: dict) -> None:
    """RoPE/YaRN words. Older configs say rope_scaling {type: ...}; transformers re-saves them as
    rope_parameters {rope_type: ..., rope_theta: ...} (YaRN, Peng et al. 2023; the HF
    modeling_rope_utils.py _compute_yarn_parameters names)."""
    for key in ("rope_scaling", "rope_parameters"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            fail(f"config.json: '{key}' must be an object or null, got {describe(raw[key])}")
    key = "rope_scaling" if raw.get("rope_scaling") else "rope_parameters"
    rope = raw.get(key) or {}
    places = [("", raw), ("rope_parameters.", raw.get("rope_parameters") or {}), (key + ".", rope)]
    prefix, obj = next((p for p in places if p[1].get("rope_theta") is not None), places[0])
    read_fields(c, obj, [("rope_theta", "rope_theta", "float", 10000.0)], prefix)
    kind = rope.get("type") or rope.get("rope_type") or "default"
    if kind == "yarn":
        c["rope_type"] = 1
        read_fields(c, rope, YARN_FIELDS, key + ".")
    elif kind == "default":
        c.update(NO_ROPE_SCALING)
    else:
        fail(f"config.json: unsupported rope scaling type {describe(kind)} (supported: yarn, default)")


# DeepSeek-V3.2's lightning indexer (DeepSeek Sparse Attention): required for deepseek_v32, 0 otherwise.
INDEXER_FIELDS = [
    ("index_n_heads", "index_n_heads", "int", None),
    ("index_head_dim", "index_head_dim", "int", None),
    ("index_topk", "index_topk", "int", None),
]

# What a model type's config.json leaves out and its modeling code fixes (HF transformers' classes).
# GLM-4.7-Flash (glm4_moe_lite) has no scoring_func, yet transformers' Glm4MoeLiteTopkRouter always takes
# the sigmoid (noaux_tc, DeepSeek-V3 §2.1.2); DeepSeek's MoEGate default, softmax, is the bug llama.cpp
# shipped (PR #18980). Its config.json has no bos_token_id and GLM has no BOS (its template starts with
# [gMASK]<sop>): HF's class default 0 must never be prepended.
MODEL_TYPE_RULES = {
    "glm4_moe_lite": {"scoring_func": "sigmoid", "no_bos": True},
}


def read_model_type_rules(c: dict, raw: dict, model_type: str) -> None:
    """The model-type rules above, and the config fields of newer families that run.c has one answer for."""
    rules = MODEL_TYPE_RULES.get(model_type, {})
    if "scoring_func" in rules:
        read_fields(c, raw, [("scoring_func", "scoring_func", {rules["scoring_func"]: SCORING_FUNCS[rules["scoring_func"]]},
                              rules["scoring_func"])])
    if rules.get("no_bos"):
        c["bos_token_id"] = -1
    # RoPE on adjacent pairs of the stored weights, as DeepSeek's (HF's rope_interleave, default true);
    # the NeoX half-rotation and a partial rotary part are GLM-4.5's (glm4_moe), another architecture.
    if read_bool(raw, "rope_interleave", True, "rope_interleave") == 0:
        fail("config.json: rope_interleave false (NeoX-style RoPE on halves) is not supported")
    if read_float(raw, "partial_rotary_factor", 1.0, "partial_rotary_factor") != 1.0:
        fail(f"config.json: partial_rotary_factor {describe(raw['partial_rotary_factor'])} is not supported (only 1)")
    # transformers 5 writes the dense/MoE layout as mlp_layer_types ("dense"/"sparse" per layer) instead of
    # first_k_dense_replace; run.c has the leading-dense-layers form of it.
    types = get(raw, "mlp_layer_types", (list,), "config.json")
    if types is not None:
        k = next((i for i, t in enumerate(types) if t != "dense"), len(types))
        if len(types) != c["n_layers"] or any(t != "sparse" for t in types[k:]):
            fail(f"config.json: mlp_layer_types must be num_hidden_layers entries, \"dense\" then \"sparse\", "
                 f"got {describe(types)}")
        if raw.get("first_k_dense_replace") is not None and c["first_k_dense_replace"] != k:
            fail(f"config.json: first_k_dense_replace {c['first_k_dense_replace']} disagrees with mlp_layer_types")
        c["first_k_dense_replace"] = k
        c["source"]["first_k_dense_replace"] = "mlp_layer_types"


def load_config(hf_dir: str, mtp: bool = False) -> dict:
    """Read config.json into a dict with one key per config word (n_tokens and the tokenizer
    hash are filled in later), then check it as run.c will. mtp: the file keeps one MTP layer."""
    raw = read_json(os.path.join(hf_dir, "config.json"), "config.json")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or model_type not in SUPPORTED_MODEL_TYPES:
        fail(f"config.json: unsupported model_type {describe(model_type)} "
             f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    c = {"source": {}}
    read_fields(c, raw, CONFIG_FIELDS)
    read_rope(c, raw)
    c["bos_token_id"] = read_token_id(raw, "bos_token_id")
    c.update(zip(EOS_WORDS, read_eos_ids(hf_dir, raw)))
    c["source"].update(bos_token_id="bos_token_id", **{w: "eos_token_id" for w in EOS_WORDS})
    read_model_type_rules(c, raw, model_type)
    c.update(index_n_heads=0, index_head_dim=0, index_topk=0)
    if model_type == "deepseek_v32":
        read_fields(c, raw, INDEXER_FIELDS)
    c.update(n_mtp_layers=int(mtp),  # MTP layers (index >= n_layers): the first one kept with --mtp
             n_tokens=0, tokenizer_hash_lo=0, tokenizer_hash_hi=0, **{name: 0 for name, _ in CONFIG_WORDS[44:]})
    c["tie_word_embeddings"] = read_bool(raw, "tie_word_embeddings", False, "tie_word_embeddings")
    check_config(c)
    return c


def check_range(c: dict, word: str, lo: int, hi: int) -> None:
    if not lo <= c[word] <= hi:
        fail(f"config.json: {c['source'][word]} = {c[word]} is out of range (expected {lo}..{hi})")


def check_float(c: dict, word: str, lo: float, hi: float) -> None:
    """c[word] is a float32 value; lo and hi are rounded to float32 as run.c's literals are."""
    lo32, hi32 = (struct.unpack("<f", struct.pack("<f", x))[0] for x in (lo, hi))
    if not lo32 <= c[word] <= hi32:
        fail(f"config.json: {c['source'][word]} = {c[word]:g} is out of range "
             f"(expected a finite value in {lo:g}..{hi:g})")


def check_config(c: dict) -> None:
    """The checks of run.c's validate_config, in its order, so that run.c never rejects a file
    this wrote. They bound every size before any per-layer list is built."""
    I32_MAX = 2**31 - 1
    check_range(c, "dim", 1, MAX_DIM)
    check_range(c, "n_layers", 1, 1 << 16)
    check_range(c, "vocab_size", 1, MAX_DIM)
    check_range(c, "n_heads", 1, 1 << 16)
    check_range(c, "q_lora_rank", 0, MAX_DIM)
    check_range(c, "kv_lora_rank", 1, MAX_DIM)
    check_range(c, "qk_nope_head_dim", 1, 1 << 16)
    check_range(c, "qk_rope_head_dim", 2, 1 << 16)
    if c["qk_rope_head_dim"] % 2:  # RoPE rotates pairs
        fail(f"config.json: qk_rope_head_dim = {c['qk_rope_head_dim']} must be even")
    check_range(c, "v_head_dim", 1, 1 << 16)
    check_range(c, "n_routed_experts", 0, 1 << 16)
    check_range(c, "first_k_dense_replace", 0, I32_MAX)
    check_range(c, "moe_layer_freq", 1, I32_MAX)
    moe = [is_moe_layer(c, layer) for layer in range(c["n_layers"] + c["n_mtp_layers"])]
    has_moe, has_dense = any(moe), not all(moe)
    check_range(c, "intermediate_size", 1 if has_dense else 0, MAX_DIM)
    check_range(c, "moe_intermediate_size", 0, MAX_DIM)
    check_range(c, "n_shared_experts", 0, 1 << 10)
    check_range(c, "num_experts_per_tok", 0, 1 << 16)
    check_range(c, "n_group", 0, 1 << 16)
    if c["n_shared_experts"] * c["moe_intermediate_size"] > MAX_DIM:
        fail("config.json: n_shared_experts x moe_intermediate_size is too large")
    if has_moe:
        E = c["n_routed_experts"]
        check_range(c, "moe_intermediate_size", 1, MAX_DIM)
        check_range(c, "num_experts_per_tok", 1, E)
        check_range(c, "n_group", 1, E)
        if E % c["n_group"]:
            fail(f"config.json: n_group = {c['n_group']} does not divide n_routed_experts = {E}")
        check_range(c, "topk_group", 1, c["n_group"])
        check_float(c, "routed_scaling_factor", 0.0, 1e6)
        group_size = E // c["n_group"]
        # The kept groups must hold at least K experts (group-limited routing, the official
        # inference/model.py Gate).
        if c["topk_method"] != TOPK_METHODS["greedy"] and c["topk_group"] * group_size < c["num_experts_per_tok"]:
            fail(f"config.json: topk_group {c['topk_group']} x group size {group_size} < "
                 f"num_experts_per_tok {c['num_experts_per_tok']}")
        # noaux_tc scores a group by the sum of its two best experts (official inference/model.py Gate).
        if c["topk_method"] == TOPK_METHODS["noaux_tc"] and c["n_group"] > 1 and group_size < 2:
            fail(f"config.json: noaux_tc needs >= 2 experts per group (got {group_size})")
    check_float(c, "rope_theta", 1.0001, 1e30)
    if c["rope_type"] == 1:
        check_float(c, "rope_factor", 1e-6, 1e6)
        check_range(c, "rope_original_max_pos", 1, I32_MAX)
        check_float(c, "rope_beta_fast", 1e-6, 1e6)
        check_float(c, "rope_beta_slow", 1e-6, 1e6)
        check_float(c, "rope_mscale", -1e3, 1e3)
        check_float(c, "rope_mscale_all_dim", -1e3, 1e3)
    check_float(c, "rms_norm_eps", 1e-30, 1.0)
    check_range(c, "max_position_embeddings", 1, I32_MAX)
    check_range(c, "bos_token_id", -1, c["vocab_size"] - 1)
    for word in EOS_WORDS:
        check_range(c, word, -1, c["vocab_size"] - 1)
    H, dn, dr, dv = c["n_heads"], c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    if max(H * (dn + dr), H * (dn + dv), H * dv, c["kv_lora_rank"] + dr) > MAX_DIM:
        fail("config.json: attention shapes are too large (num_attention_heads x head dims)")
    if c["index_n_heads"]:  # the indexer's query comes from MLA's c_Q; its rope part is its first dr values
        check_range(c, "index_n_heads", 1, 1 << 10)
        check_range(c, "index_head_dim", dr, 1 << 12)
        check_range(c, "index_topk", 1, I32_MAX)
        check_range(c, "q_lora_rank", 1, MAX_DIM)


# ----------------------------------------------------------------------------------------------
# tokenizer: n_tokens, the embedded blob and its hash


# Tokenizer file, version 2 (all integers little-endian; version 1, which run.c still reads, has the same
# layout with only the values marked v1):
#   offset 0   4 bytes   magic "STOK"
#   offset 4   u32       version = 2
#   offset 8   u32       n_vocab: ids are 0 .. n_vocab-1
#   offset 12  u32       n_merges
#   offset 16  u32       n_added: number of added tokens (special or not)
#   offset 20  i32       bos_id (-1 if none)
#   offset 24  i32       eos_id: the token the chat template writes after each reply (tokenizer_config.json's
#                        eos_token; Kimi: <|im_end|>; GLM, which has no end-of-turn token: the <|user|> that
#                        opens the next turn), -1 if none
#   offset 28  u32       flags: bit 0 add_bos_token (or chat family 7: its encoder starts every prompt with BOS),
#                        bit 1 add_eos_token (tokenizer_config.json) (v1),
#                        bit 2 ignore_merges (a pre-tokenized piece that is a whole BPE token is that token;
#                        HF's BPE option, and tiktoken's rule)
#   offset 32  u32       pre_tokenizer: 1 = DeepSeek-V3 regex sequence (DeepSeek-V3's tokenizer.json),
#                                       2 = DeepSeek-V2 7-stage pipeline (DeepSeek-V2's tokenizer.json) (v1),
#                                       3 = GLM-4's Split regex, 4 = Kimi's pat_str
#   offset 36  u32       chat template family: 0 raw (none/unknown), 1 deepseek_v2 ("User: ...\n\nAssistant:"),
#                                              2 deepseek_v3, 3 deepseek_r1 (forced <think>), 4 deepseek_v3_1 (v1),
#                                              5 glm4, 6 kimi (<|im_system|>...<|im_middle|>...<|im_end|>),
#                                              7 deepseek_v3_2 (no template: encoding_dsv32.py's rules)
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
TOKENIZER_VERSION = 2

PRETOK_V3, PRETOK_V2, PRETOK_GLM, PRETOK_KIMI = 1, 2, 3, 4

CHAT_RAW, CHAT_V2, CHAT_V3, CHAT_R1, CHAT_V3_1, CHAT_GLM4, CHAT_KIMI, CHAT_V3_2 = 0, 1, 2, 3, 4, 5, 6, 7

FLAG_BPE, FLAG_ADDED, FLAG_SPECIAL, FLAG_NORMALIZED = 1, 2, 4, 8
HEADER_ADD_BOS, HEADER_ADD_EOS, HEADER_IGNORE_MERGES = 1, 2, 4

# The exact pre-tokenizers run.c implements (those of DeepSeek-V3's and DeepSeek-V2's tokenizer.json). Anything
# else is refused: a tokenizer that silently pre-tokenizes differently would give wrong ids.
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
# GLM-4's Split (GLM-4.7-Flash's tokenizer.json, as llama.cpp's "glm4" pre-type): transformers'
# TikTokenConverter pattern, cl100k_base's.
GLM_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
# Kimi's pat_str (tokenization_kimi.py / tokenization_moonshot.py, TikTokenTokenizer), alternatives joined by |.
KIMI_SPLIT = "|".join([
    "[\\p{Han}]+",
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}&&[^\\p{Han}]]*"
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "\\p{N}{1,3}", " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*", "\\s*[\\r\\n]+", "\\s+(?!\\S)", "\\s+"])
ONE_SPLIT_PRETOKENIZERS = {GLM_SPLIT: PRETOK_GLM, KIMI_SPLIT: PRETOK_KIMI}


def canonical_regex(p: str, where: str) -> str:
    """A regex with \\u escapes expanded and CR/LF written as \\r/\\n (tokenizer.json files have both)."""
    return expand_escapes(p, where).replace("\r", "\\r").replace("\n", "\\n")


def named_pattern(p: str) -> str:
    """A regex quoted whole for an error message (cut only if it is very long)."""
    text = json.dumps(p, ensure_ascii=False)
    return text if len(text) <= 400 else text[:400] + f"... ({len(p)} characters)"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> character table (bytes_to_unicode in OpenAI's GPT-2 encoder.py, which HF
    tokenizers' ByteLevel pre-tokenizer and decoder use)."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, n = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(0x100 + n)
            n += 1
    return table


# What is wrong with a tokenizer decides what happens (README, "Export and run a real model"):
# - a malformed tokenizer.json / tokenizer_config.json / chat_template.jinja (wrong JSON types,
#   invalid Unicode, a bad regex escape, ids out of range or used twice, merges of tokens not in
#   the vocabulary) is bad input like any other: ExportError, exit 1;
# - a well-formed tokenizer that run.c cannot reproduce exactly (another pre-tokenizer, a
#   normalizer, a non-BPE model, lstrip/rstrip, ...) is UnsupportedTokenizer: the model exports
#   without a tokenizer, with a warning (and --tokenizer fails).
# The files are type-checked when they are read, before anything asks whether run.c supports them.


class UnsupportedTokenizer(ExportError):
    """A well-formed tokenizer that run.c cannot reproduce exactly."""


def unsupported(msg: str) -> None:
    raise UnsupportedTokenizer(msg)


MAX_TOKEN_ID = (1 << 24) - 1  # run.c's init_tokenizer reads at most 2^24 ids
TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
              list: "an array", dict: "an object"}


def get(obj: dict, key: str, types: tuple, where: str, default=None):
    """obj[key] if it has one of `types` (true/false is not an integer here); `default` if it is
    absent or null; else an error naming where.key."""
    value = obj.get(key)
    if value is None:
        return default
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        names = [TYPE_NAMES[t] for t in types if not (t is int and float in types)]
        fail(f"{where}: '{key}' must be {' or '.join(names)}, "
             f"got {describe(value)}")
    return value


def is_token_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_ID


def bad_id(value, where: str) -> None:
    fail(f"{where}: token id must be an integer in 0..{MAX_TOKEN_ID}, got {describe(value)}")


def read_tokenizer_json(hf_dir: str) -> Optional[dict]:
    """tokenizer.json with the parts every reader uses type-checked (added_tokens, model, its
    vocab and their ids), or None if the checkpoint has none."""
    path = os.path.join(hf_dir, "tokenizer.json")
    if not os.path.lexists(path):
        return None
    tj = read_json(path, "tokenizer.json")
    model = tj.get("model")
    if not isinstance(model, dict):
        fail(f"tokenizer.json: 'model' must be an object, got {describe(model)}")
    get(model, "type", (str,), "tokenizer.json: model")
    vocab = model.get("vocab")
    if isinstance(vocab, dict):  # BPE, WordPiece, WordLevel: token -> id
        owner: dict[int, str] = {}
        for token, i in vocab.items():
            if not is_token_id(i):
                bad_id(i, f"tokenizer.json: model.vocab[{describe(token)}]")
            if i in owner:
                fail(f"tokenizer.json: model.vocab gives id {i} to both {describe(owner[i])} "
                     f"and {describe(token)}")
            owner[i] = token
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
        for k, entry in enumerate(vocab):
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                    and isinstance(entry[1], (int, float)) and not isinstance(entry[1], bool)):
                fail(f"tokenizer.json: model.vocab[{k}] must be [piece, score], got {describe(entry)}")
        if len(vocab) > MAX_TOKEN_ID + 1:
            fail(f"tokenizer.json: model.vocab has {len(vocab)} entries, more than {MAX_TOKEN_ID + 1}")
    else:
        fail(f"tokenizer.json: model.vocab must be an object (or a Unigram list), got {describe(vocab)}")
    ids = set()
    for k, a in enumerate(get(tj, "added_tokens", (list,), "tokenizer.json", [])):
        where = f"tokenizer.json: added_tokens[{k}]"
        if not isinstance(a, dict):
            fail(f"{where} must be an object, got {describe(a)}")
        if not isinstance(a.get("content"), str) or not a["content"]:
            fail(f"{where}: 'content' must be a non-empty string, got {describe(a.get('content'))}")
        if not is_token_id(a.get("id")):
            bad_id(a.get("id"), where)
        if a["id"] in ids:
            fail(f"{where}: id {a['id']} is given to two added tokens")
        ids.add(a["id"])
        for flag in ("special", "normalized", "lstrip", "rstrip", "single_word"):
            get(a, flag, (bool,), where)
    return tj


def read_tokenizer_config(hf_dir: str) -> dict:
    """tokenizer_config.json (or {}), with the fields used here type-checked."""
    path = os.path.join(hf_dir, "tokenizer_config.json")
    cfg = read_json(path, "tokenizer_config.json") if os.path.lexists(path) else {}
    where = "tokenizer_config.json"
    for key in ("bos_token", "eos_token"):
        tok = cfg.get(key)
        if not (tok is None or isinstance(tok, str)
                or isinstance(tok, dict) and isinstance(tok.get("content"), str)):
            fail(f"{where}: '{key}' must be a string or an object with a string 'content', "
                 f"got {describe(tok)}")
    get(cfg, "add_bos_token", (bool,), where)
    get(cfg, "add_eos_token", (bool,), where)
    t = cfg.get("chat_template")
    if isinstance(t, list):  # [{"name": ..., "template": ...}, ...]
        if not all(isinstance(d, dict) and isinstance(d.get("name"), str)
                   and isinstance(d.get("template"), str) for d in t):
            fail(f"{where}: a 'chat_template' list must hold objects with a string 'name' and 'template'")
    elif t is not None and not isinstance(t, str):
        fail(f"{where}: 'chat_template' must be a string or a list, got {describe(t)}")
    return cfg


def read_chat_template(hf_dir: str, cfg: dict) -> Optional[str]:
    t = cfg.get("chat_template")
    if isinstance(t, list):
        t = {d["name"]: d["template"] for d in t}.get("default")
    path = os.path.join(hf_dir, "chat_template.jinja")
    if t is None and os.path.lexists(path):
        with open_input(path, "chat_template.jinja") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if len(data) > MAX_JSON_BYTES:
            fail(f"chat_template.jinja {path} is larger than {MAX_JSON_BYTES >> 20} MB")
        try:
            t = data.decode("utf-8")
        except UnicodeDecodeError as e:
            fail(f"chat_template.jinja {path}: not UTF-8 ({e.reason} at byte {e.start})")
    return t


def pre_tokenizer_stages(pre, where: str) -> list[dict]:
    """The pre_tokenizer's stages (a Sequence's list, or the one stage), type-checked."""
    if pre is None:
        return []
    if not isinstance(pre, dict):
        fail(f"{where} must be an object, got {describe(pre)}")
    stages = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not isinstance(stages, list):
        fail(f"{where}: 'pretokenizers' must be an array, got {describe(stages)}")
    for k, s in enumerate(stages):
        w = f"{where} stage {k}"
        if not isinstance(s, dict) or not isinstance(s.get("type"), str):
            fail(f"{w} must be an object with a string 'type', got {describe(s)}")
        for flag in ("add_prefix_space", "use_regex", "trim_offsets", "individual_digits", "invert"):
            get(s, flag, (bool,), w)
        get(s, "behavior", (str,), w)
        if s["type"] == "Split":
            pat = s.get("pattern")
            if not (isinstance(pat, dict) and len(pat) == 1
                    and isinstance(pat.get("Regex", pat.get("String")), str)):
                fail(f"{w}: 'pattern' must be {{\"Regex\": string}} or {{\"String\": string}}, "
                     f"got {describe(pat)}")
            if "Regex" in pat:
                expand_escapes(pat["Regex"], w)  # a bad escape is an error here
    return stages


def expand_escapes(p: str, where: str) -> str:
    """Turn \\uXXXX and \\UXXXXXXXX escapes into characters, leave every other escape alone. An
    escape the regex engine would refuse (\\u without 4 hex digits, \\U without 8 or beyond
    U+10FFFF, a trailing backslash) is an error."""
    out, i = [], 0
    while i < len(p):
        if p[i] != "\\":
            out.append(p[i])
            i += 1
            continue
        if i + 1 == len(p):
            fail(f"{where}: the regex ends with a lone backslash")
        n = {"u": 4, "U": 8}.get(p[i + 1], 0)
        digits = p[i + 2:i + 2 + n]
        if n and (len(digits) != n or not all(ch in string.hexdigits for ch in digits)
                  or int(digits, 16) > 0x10FFFF):
            fail(f"{where}: bad escape {describe(p[i:i + 2 + n])} in the regex")
        out.append(chr(int(digits, 16)) if n else p[i:i + 2])
        i += 2 + n
    return "".join(out)


def check_byte_level(stage: dict, where: str) -> None:
    if stage["type"] != "ByteLevel" or stage.get("add_prefix_space") or stage.get("use_regex", True):
        unsupported(f"{where}: expected a final ByteLevel stage with add_prefix_space false and use_regex false")


def detect_pre_tokenizer(stages: list[dict]) -> int:
    where = "tokenizer.json pre_tokenizer"
    pats, i = [], 0
    while i < len(stages) and stages[i]["type"] == "Split":
        s = stages[i]
        if s.get("behavior") != "Isolated" or s.get("invert") or "Regex" not in s["pattern"]:
            unsupported(f"{where}: Split stage {i} must be a Regex with behavior Isolated, invert false")
        pats.append(s["pattern"]["Regex"])
        i += 1
    rest = stages[i:]
    if pats == V3_SPLITS:
        if len(rest) != 1:
            unsupported(f"{where}: DeepSeek-V3 splits must be followed by exactly one ByteLevel stage")
        check_byte_level(rest[0], where)
        return PRETOK_V3
    # V2 regexes are written with \u escapes in the file; compare them after expanding the escapes.
    if [expand_escapes(p, where) for p in pats] == [expand_escapes(p, where) for p in V2_SPLITS]:
        if len(rest) != 2 or rest[0]["type"] != "Digits" or rest[0].get("individual_digits") is not True:
            unsupported(f"{where}: DeepSeek-V2 splits must be followed by Digits(individual_digits=true) and ByteLevel")
        check_byte_level(rest[1], where)
        return PRETOK_V2
    if len(pats) == 1 and canonical_regex(pats[0], where) in ONE_SPLIT_PRETOKENIZERS:
        if len(rest) != 1:
            unsupported(f"{where}: the Split must be followed by exactly one ByteLevel stage")
        check_byte_level(rest[0], where)
        return ONE_SPLIT_PRETOKENIZERS[canonical_regex(pats[0], where)]
    unsupported(f"{where}: Split regex {' then '.join(named_pattern(p) for p in pats) or '(none)'}: not one of "
                f"the supported pre-tokenizers (DeepSeek-V3's, DeepSeek-V2's, GLM-4's, Kimi's)")
    return 0


def check_model_fields(m: dict) -> list[tuple[str, str]]:
    """Type-check the BPE model's options; returns its merges as (left, right) pairs."""
    where = "tokenizer.json: model"
    for key in ("byte_fallback", "ignore_merges", "fuse_unk"):
        get(m, key, (bool,), where)
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "unk_token"):
        get(m, key, (str,), where)
    get(m, "dropout", (int, float), where)
    merges = []
    for k, merge in enumerate(get(m, "merges", (list,), where, [])):
        parts = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(parts, list) and len(parts) == 2 and all(isinstance(x, str) for x in parts)):
            fail(f"tokenizer.json: model.merges[{k}] must be \"left right\" or [left, right], "
                 f"got {describe(merge)}")
        merges.append((parts[0], parts[1]))
    return merges


def check_normalizer(norm) -> bool:
    """Type-check the normalizer; True if it is none or empty (all run.c implements)."""
    if norm is None:
        return True
    if not isinstance(norm, dict) or not isinstance(norm.get("type"), str):
        fail(f"tokenizer.json: 'normalizer' must be null or an object with a string 'type', "
             f"got {describe(norm)}")
    return norm["type"] == "Sequence" and not get(norm, "normalizers", (list,), "tokenizer.json: normalizer")


def chat_family(template: Optional[str]) -> int:
    """Which fixed chat rendering the template string is (the chat_template strings of
    DeepSeek-V2's, V3's, R1's and V3.1's tokenizer_config.json)."""
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
    if "[gMASK]<sop>" in template and "<|assistant|>" in template:  # GLM-4.7's chat_template.jinja
        return CHAT_GLM4
    # Moonlight's / Kimi's: run.c copies the default system turn the template injects (its first
    # <|im_system|>system<|im_middle|>, up to <|im_end|>), so that must be plain text.
    key = "<|im_system|>system<|im_middle|>"
    default = template.partition(key)[2].partition("<|im_end|>")
    if key in template and default[1] and "{" not in default[0] and "}" not in default[0]:
        return CHAT_KIMI
    print("export.py: warning: unrecognised chat_template, chat mode will not be available", file=sys.stderr)
    return CHAT_RAW


# The token each family's template writes after a reply (the tokenizer file's eos_id), when it is not
# tokenizer_config.json's eos_token: Kimi ends a turn with <|im_end|>; GLM has no end-of-turn token, the
# model ends its turn by emitting <|user|> (or <|observation|>, <|endoftext|>) and the next turn starts
# with <|user|>.
TURN_END = {CHAT_GLM4: "<|user|>", CHAT_KIMI: "<|im_end|>"}


def chat_family_and_turn_end(template: Optional[str], added: dict, eos_id: int) -> tuple[int, int]:
    """(chat family, eos_id for the tokenizer file); added maps added-token contents to ids."""
    family = chat_family(template)
    if family in TURN_END:
        if TURN_END[family] not in added:
            print(f"export.py: warning: {TURN_END[family]} is not an added token; chat mode will not be "
                  f"available", file=sys.stderr)
            return CHAT_RAW, eos_id
        return family, added[TURN_END[family]]
    return family, eos_id


def is_v32_encoder(hf_dir: str) -> bool:
    """DeepSeek-V3.2 ships no chat_template but a Python encoder, encoding/encoding_dsv32.py, whose turns are
    V3.1's; a deepseek_v32 config.json without a template means the same."""
    if os.path.lexists(os.path.join(hf_dir, "encoding", "encoding_dsv32.py")):
        return True
    path = os.path.join(hf_dir, "config.json")
    return os.path.lexists(path) and read_json(path, "config.json").get("model_type") == "deepseek_v32"


def token_content(tok) -> Optional[str]:
    """bos_token / eos_token: null, a string, or an AddedToken object (type-checked on reading)."""
    return tok if tok is None or isinstance(tok, str) else tok["content"]


def tokenizer_blob(hf_dir: str) -> Optional[bytes]:
    """The tokenizer to embed in a model file, or None if hf_dir has no tokenizer.json or one run.c cannot
    reproduce exactly (then the model exports without text support, with a warning saying why).
    A malformed tokenizer is an error."""
    try:
        return build_tokenizer(hf_dir)
    except UnsupportedTokenizer as e:
        print(f"export.py: warning: tokenizer not supported, none embedded: {e}", file=sys.stderr)
        return None


def build_tokenizer(hf_dir: str) -> Optional[bytes]:
    """The tokenizer file for the checkpoint in hf_dir (from its tiktoken.model if it has one, as Moonlight
    and Kimi do, else from tokenizer.json), or None if it has neither."""
    if os.path.lexists(os.path.join(hf_dir, "tiktoken.model")):
        return build_tiktoken_tokenizer(hf_dir)
    tj = read_tokenizer_json(hf_dir)
    if tj is None:
        return None
    cfg = read_tokenizer_config(hf_dir)
    template = read_chat_template(hf_dir, cfg)
    model = tj["model"]
    merge_pairs = check_model_fields(model)
    stages = pre_tokenizer_stages(tj.get("pre_tokenizer"), "tokenizer.json pre_tokenizer")
    empty_normalizer = check_normalizer(tj.get("normalizer"))
    vocab: dict[str, int] = model["vocab"]
    added = tj.get("added_tokens") or []

    # well-formed as a BPE tokenizer: ids used once, merges of tokens in the vocabulary
    if model.get("type") != "BPE":
        unsupported(f"tokenizer.json: model type must be BPE (got {describe(model.get('type'))})")
    if not isinstance(vocab, dict):
        fail("tokenizer.json: a BPE model.vocab must be an object")
    n_vocab = max(list(vocab.values()) + [a["id"] for a in added], default=-1) + 1
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    tokens: dict[int, bytes] = {}               # ids without a token are holes
    flags = bytearray(n_vocab)                  # not a list: a few tokens may have ids up to 2^24
    for s, i in vocab.items():
        if not s:
            fail(f"tokenizer.json: model.vocab has an empty token (id {i})")
        if all(c in byte_of for c in s):
            tokens[i] = bytes(byte_of[c] for c in s)
            flags[i] |= FLAG_BPE
        else:  # HF's ByteLevel decoder falls back to the raw UTF-8 of such a token
            tokens[i] = s.encode("utf-8")
    contents = set()
    for a in added:
        i, content = a["id"], a["content"].encode("utf-8")
        if a["content"] in contents:
            fail(f"tokenizer.json: added token {describe(a['content'])} appears twice")
        contents.add(a["content"])
        if tokens.get(i, content) != content:
            fail(f"tokenizer.json: added token {describe(a['content'])} has id {i}, which model.vocab "
                 f"gives to another token")
        tokens[i] = content
        flags[i] |= FLAG_ADDED | (FLAG_SPECIAL if a.get("special") else 0)
        flags[i] |= FLAG_NORMALIZED if a.get("normalized", True) else 0
    for left, right in merge_pairs:
        for part in (left, right, left + right):
            if part not in vocab:
                fail(f"tokenizer.json: merge {describe(left + ' ' + right)} needs {describe(part)}, "
                     f"which is not in model.vocab")

    # what run.c reproduces exactly
    if model.get("byte_fallback") or model.get("dropout") not in (None, 0, 0.0):
        unsupported("tokenizer.json: BPE byte_fallback and dropout are not supported")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        unsupported("tokenizer.json: BPE continuing_subword_prefix/end_of_word_suffix are not supported")
    if not empty_normalizer:
        unsupported(f"tokenizer.json: only an empty normalizer is supported (got {tj['normalizer']['type']})")
    pretok = detect_pre_tokenizer(stages)
    for c in byte_of:
        if c not in vocab:
            unsupported(f"tokenizer.json: byte-level character {c!r} is missing from the vocab")
    for a in added:
        if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
            unsupported(f"tokenizer.json: added token {describe(a['content'])} uses lstrip/rstrip/single_word")

    # Merge rank = index in the list; HF builds a map, so a repeated pair keeps its last rank.
    ranked: dict[tuple[int, int], tuple[int, int]] = {}
    for rank, (left, right) in enumerate(merge_pairs):
        ia, ib, ir = vocab[left], vocab[right], vocab[left + right]
        if not (flags[ia] & flags[ib] & flags[ir] & FLAG_BPE):
            unsupported(f"tokenizer.json: merge {describe(left + ' ' + right)} uses a token that is not byte-level")
        ranked[(ia, ib)] = (rank, ir)
    merges = sorted((r, a, b, res) for (a, b), (r, res) in ranked.items())
    if len(merges) > 1 << 24:
        unsupported(f"tokenizer.json: {len(merges)} merges, run.c reads at most {1 << 24}")

    def token_id(key: str) -> int:
        c = token_content(cfg.get(key))
        if c is None:
            return -1
        for a in added:
            if a["content"] == c:
                return a["id"]
        if c in vocab and flags[vocab[c]]:
            return vocab[c]
        # A vocab entry that is neither byte-level nor an added token is a hole for run.c.
        unsupported(f"tokenizer_config.json: {key} {describe(c)} is not an added token or a "
                    f"byte-level token of the vocabulary")
        return -1

    bos_id, eos_id = token_id("bos_token"), token_id("eos_token")
    header_flags = ((HEADER_ADD_BOS if cfg.get("add_bos_token") else 0) | (HEADER_ADD_EOS if cfg.get("add_eos_token") else 0)
                    | (HEADER_IGNORE_MERGES if model.get("ignore_merges") else 0))
    if header_flags & HEADER_ADD_BOS and bos_id < 0:
        unsupported("tokenizer_config.json: add_bos_token is true but there is no bos_token")
    family, eos_id = chat_family_and_turn_end(template, {a["content"]: a["id"] for a in added}, eos_id)
    if template is None and bos_id >= 0 and is_v32_encoder(hf_dir):
        # encode_messages starts with BOS although tokenizer_config.json says add_bos_token false
        family, header_flags = CHAT_V3_2, header_flags | HEADER_ADD_BOS
    return pack_tokenizer(tokens, flags, [(a, b, res) for _, a, b, res in merges], [a["id"] for a in added],
                          (bos_id, eos_id, header_flags, pretok, family), template)


def pack_tokenizer(tokens: dict, flags: bytearray, merges: list, added_ids: list, fields: tuple,
                   template: Optional[str]) -> bytes:
    """The tokenizer file: tokens id -> bytes (missing ids are holes), merges (left, right, result) in rank
    order, and the header fields (bos_id, eos_id, flags, pre_tokenizer, chat family)."""
    n_vocab = len(flags)
    tbytes = (template or "").encode("utf-8")
    ids = sorted(tokens)
    pool = b"".join(tokens[i] for i in ids)
    lengths = np.zeros(n_vocab + 1, dtype=np.int64)
    lengths[np.array(ids, dtype=np.int64) + 1] = [len(tokens[i]) for i in ids]
    offsets = np.cumsum(lengths).astype("<u4")
    out = [TOKENIZER_MAGIC, struct.pack("<IIIIiiIIIII", TOKENIZER_VERSION, n_vocab, len(merges), len(added_ids),
                                        *fields, len(tbytes), len(pool))]
    out.append(offsets.tobytes())
    out.append(bytes(flags))
    out.append(pool)
    out.append(np.array(merges, dtype="<u4").reshape(-1, 3).tobytes())
    out.append(struct.pack(f"<{len(added_ids)}I", *added_ids))
    out.append(tbytes)
    return b"".join(out)


# ----------------------------------------------------------------------------------------------
# a tiktoken vocabulary (Moonlight, Kimi-K2): tiktoken.model + the pattern of tokenization_*.py


def read_tiktoken_ranks(path: str) -> list[bytes]:
    """tiktoken.model (tiktoken.load.load_tiktoken_bpe's format): one line `base64(token bytes) rank` per
    token, ranks 0..n-1. Returns the token bytes by rank."""
    with open_input(path, "tiktoken.model") as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        fail(f"tiktoken.model {path} is larger than {MAX_JSON_BYTES >> 20} MB")
    by_rank: dict[int, bytes] = {}
    for k, line in enumerate(data.split(b"\n")):
        if not line.strip():
            continue
        parts = line.split()
        try:
            token, rank = base64.b64decode(parts[0], validate=True), int(parts[1])
            if len(parts) != 2 or not token or not 0 <= rank <= MAX_TOKEN_ID:
                raise ValueError
        except (ValueError, IndexError, binascii.Error):
            fail(f"tiktoken.model line {k + 1}: expected 'base64(token) rank' with a rank in 0..{MAX_TOKEN_ID}, "
                 f"got {describe(line[:60].decode('latin-1'))}")
        if rank in by_rank:
            fail(f"tiktoken.model line {k + 1}: rank {rank} appears twice")
        by_rank[rank] = token
    tokens = [by_rank.get(r) for r in range(len(by_rank))]
    if None in tokens:
        fail(f"tiktoken.model: the ranks are not 0..{len(by_rank) - 1}")
    if len(set(tokens)) != len(tokens):
        fail("tiktoken.model: a token appears twice")
    missing = set(range(256)) - {t[0] for t in tokens if len(t) == 1}
    if missing:
        fail(f"tiktoken.model: no token for byte 0x{min(missing):02x} (tiktoken needs all 256)")
    return tokens


def string_value(node) -> Optional[str]:
    """The value of a string expression made of literals: "a", "a" "b", "a" + "b", "|".join([...])."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        a, b = string_value(node.left), string_value(node.right)
        return None if a is None or b is None else a + b
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join"
            and len(node.args) == 1 and not node.keywords and isinstance(node.args[0], (ast.List, ast.Tuple))):
        sep, parts = string_value(node.func.value), [string_value(e) for e in node.args[0].elts]
        return None if sep is None or None in parts else sep.join(parts)
    return None


def read_tiktoken_code(hf_dir: str) -> tuple[str, int]:
    """The split pattern (pat_str) and the number of special ids after the ranks of Moonshot's
    TikTokenTokenizer, read from the checkpoint's tokenization_*.py with Python's ast (never run):
    num_reserved_special_tokens, plus 2 where the file reserves `num_reserved_special_tokens + 2` ids
    (Moonlight: 163584 ranks, 258 special ids)."""
    paths = sorted(glob.glob(os.path.join(glob.escape(hf_dir), "tokenization_*.py")))
    if not paths:
        unsupported("tiktoken.model without a tokenization_*.py: its split pattern (pat_str) is unknown")
    for path in paths:
        with open_input(path, "tokenizer code") as f:
            data = f.read(MAX_JSON_BYTES + 1)
        try:
            tree = ast.parse(data.decode("utf-8"), path)
        except (SyntaxError, ValueError, UnicodeDecodeError, RecursionError, MemoryError) as e:
            fail(f"{path}: not Python source this can read ({type(e).__name__})")
        found = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id in ("pat_str", "num_reserved_special_tokens"):
                        found[target.id] = node.value
        if "pat_str" not in found:
            continue
        pattern = string_value(found["pat_str"])
        reserved = found.get("num_reserved_special_tokens")
        if pattern is None:
            unsupported(f"{path}: pat_str is not a string made of literals")
        if not (isinstance(reserved, ast.Constant) and is_token_id(reserved.value)):
            unsupported(f"{path}: no integer num_reserved_special_tokens")
        plus_two = re.search(rb"num_reserved_special_tokens\s*\+\s*2\b", data) is not None
        return pattern, reserved.value + (2 if plus_two else 0)
    unsupported(f"no pat_str in {', '.join(os.path.basename(p) for p in paths)}")
    return "", 0


def config_vocab_size(hf_dir: str) -> Optional[int]:
    path = os.path.join(hf_dir, "config.json")
    return read_int(read_json(path, "config.json"), "vocab_size", None, "vocab_size") if os.path.lexists(path) else None


def build_tiktoken_tokenizer(hf_dir: str) -> bytes:
    """A tiktoken vocabulary (tokenizer.json-free checkpoints: Moonlight, Kimi-K2) as a tokenizer file.
    The ranks become the BPE vocabulary (id = rank). Special ids follow them: tokenizer_config.json's
    added_tokens_decoder names them, `<|reserved_token_{id}|>` the rest (TikTokenTokenizer's rule); ids
    beyond config.json's vocab_size, which have no embedding row (Moonlight's two extra ones), are left out,
    so their text is ordinary text. tiktoken's BPE merges, again and again, the adjacent pair whose
    concatenation has the lowest rank, and a piece that is a whole token is that token (ignore_merges).
    The merges written here are every split of every token into two tokens, in the rank order of the token:
    two different splits of one token never meet in a piece (the parts inside an occurrence of the token only
    ever merge with each other, by the same ranks everywhere), so ranking a merge by its place in this list is
    ranking it by its result, exactly tiktoken's order. (The one-merge-per-token conversion of llama.cpp and
    the HF converters misses tokens whose rank is below their parts'.)"""
    ranks = read_tiktoken_ranks(os.path.join(hf_dir, "tiktoken.model"))
    pattern, n_special = read_tiktoken_code(hf_dir)
    pretok = ONE_SPLIT_PRETOKENIZERS.get(canonical_regex(pattern, "tokenization pat_str"))
    if pretok is None:
        unsupported(f"pat_str {named_pattern(pattern)}: not one of the supported pre-tokenizers (GLM-4's, Kimi's)")
    cfg = read_tokenizer_config(hf_dir)
    template = read_chat_template(hf_dir, cfg)
    n_base = len(ranks)
    names = {}
    for key, entry in get(cfg, "added_tokens_decoder", (dict,), "tokenizer_config.json", {}).items():
        where = f"tokenizer_config.json: added_tokens_decoder[{describe(key)}]"
        if not (key.isdigit() and n_base <= int(key) < n_base + n_special):
            fail(f"{where}: not a special id of this tiktoken vocabulary ({n_base}..{n_base + n_special - 1})")
        if not isinstance(entry, dict) or not isinstance(entry.get("content"), str) or not entry["content"]:
            fail(f"{where} must be an object with a non-empty string 'content'")
        names[int(key)] = entry["content"]
    vocab_size = config_vocab_size(hf_dir)
    last = n_base + n_special if vocab_size is None else min(n_base + n_special, max(vocab_size, n_base))
    if last < n_base + n_special:
        print(f"export.py: warning: special ids {last}..{n_base + n_special - 1} have no embedding row (vocab_size "
              f"{vocab_size}); left out, their text is tokenized as ordinary text", file=sys.stderr)
    specials = {i: names.get(i, f"<|reserved_token_{i}|>") for i in range(n_base, last)}
    if len(set(specials.values())) != len(specials):
        fail("tokenizer_config.json: added_tokens_decoder names two special ids alike")
    tokens = dict(enumerate(ranks)) | {i: name.encode("utf-8") for i, name in specials.items()}
    flags = bytearray([FLAG_BPE]) * n_base + bytearray([FLAG_ADDED | FLAG_SPECIAL]) * len(specials)
    index = {t: r for r, t in enumerate(ranks)}
    merges = [(index[t[:k]], index[t[k:]], r) for r, t in enumerate(ranks)
              for k in range(1, len(t)) if t[:k] in index and t[k:] in index]
    if len(merges) > 1 << 24:
        unsupported(f"tiktoken.model: {len(merges)} merges, run.c reads at most {1 << 24}")
    by_name = {name: i for i, name in specials.items()}

    def special_id(key: str) -> int:
        name = token_content(cfg.get(key))
        if name is not None and name not in by_name:
            unsupported(f"tokenizer_config.json: {key} {describe(name)} is not a special token")
        return by_name.get(name, -1)

    # TikTokenTokenizer adds no BOS whatever add_bos_token says (it overrides neither encode nor
    # build_inputs_with_special_tokens), and its chat template writes none.
    family, eos_id = chat_family_and_turn_end(template, by_name, special_id("eos_token"))
    return pack_tokenizer(tokens, flags, merges, sorted(specials),
                          (special_id("bos_token"), eos_id, HEADER_IGNORE_MERGES, pretok, family), template)


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def count_tokens(hf_dir: str) -> Optional[int]:
    """1 + the largest id in tokenizer.json (model.vocab and added_tokens), or None without a
    tokenizer.json (or one without ids)."""
    tj = read_tokenizer_json(hf_dir)
    if tj is None:
        return None
    vocab = tj["model"]["vocab"]
    ids = list(vocab.values()) if isinstance(vocab, dict) else [len(vocab) - 1] if vocab else []
    ids += [a["id"] for a in tj.get("added_tokens") or []]
    return 1 + max(ids) if ids else None


def n_tokens_of(n_ids: Optional[int], vocab_size: int, blob: Optional[bytes]) -> int:
    """The n_tokens word: the tokenizer's size (ids >= n_tokens are padding rows of the
    embedding), or every row without a tokenizer."""
    if n_ids is None:
        return vocab_size
    if n_ids > vocab_size:
        if blob is not None:
            fail(f"tokenizer.json has ids up to {n_ids - 1} but config.json vocab_size is "
                 f"{vocab_size}: the model has no embedding row for them")
        print(f"export.py: warning: tokenizer.json has ids up to {n_ids - 1} but vocab_size "
              f"is {vocab_size}; using n_tokens = {vocab_size}", file=sys.stderr)
        return vocab_size
    return n_ids


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
    with open_input(path, "safetensors file") as f:
        try:
            size = os.fstat(f.fileno()).st_size
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
    header = parse_json(header_bytes, f"{path}: safetensors header")
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
        fail(f"{where}: bad shape {describe(shape)}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        fail(f"{where}: bad data_offsets {describe(offsets)}")
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


def shard_path(hf_dir: str, name: str, filename) -> str:
    if (not isinstance(filename, str) or not filename or os.path.basename(filename) != filename
            or "\0" in filename):
        fail(f"model.safetensors.index.json: weight_map[{describe(name)}] = {describe(filename)} "
             f"is not a file name in {hf_dir}")
    return os.path.join(hf_dir, filename)


def load_checkpoint(hf_dir: str) -> dict:
    """All tensors of the checkpoint, name -> SourceTensor (headers only, no data)."""
    index_path = os.path.join(hf_dir, "model.safetensors.index.json")
    single_path = os.path.join(hf_dir, "model.safetensors")
    if not os.path.lexists(index_path):
        if not os.path.lexists(single_path):
            fail(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")
        return read_safetensors_header(single_path)
    weight_map = read_json(index_path, "model.safetensors.index.json").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        fail(f"{index_path}: missing or empty weight_map")
    paths = {filename: shard_path(hf_dir, name, filename) for name, filename in weight_map.items()}
    shards = {}
    for filename, path in sorted(paths.items()):
        if not os.path.lexists(path):
            fail(f"missing shard {filename} (listed in model.safetensors.index.json)")
        shards[filename] = read_safetensors_header(path)
    for name, filename in weight_map.items():
        if name not in shards[filename]:
            fail(f"model.safetensors.index.json puts {name} in {filename}, but it is not there")
    tensors = {}
    for filename, shard in shards.items():
        for name, tensor in shard.items():
            if name in tensors:
                fail(f"tensor {name} appears in two shards ({tensors[name].path}, {filename})")
            tensors[name] = tensor
    return tensors


# ----------------------------------------------------------------------------------------------
# the canonical tensor order (the order run.c's walk_weights reads them in)


def is_moe_layer(c: dict, layer: int) -> bool:
    return (c["n_routed_experts"] > 0 and layer >= c["first_k_dense_replace"]
            and layer % c["moe_layer_freq"] == 0)


def layer_tensors(c: dict, layer: int) -> list:
    """[(name, shape, always_f32)] of one decoder layer, also the MTP module's block (layer n_layers)."""
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
            (P + "self_attn.o_proj.weight", (D, H * dv), False)]
    if c["index_n_heads"]:  # DeepSeek-V3.2's lightning indexer; weights_proj runs in fp32 like the router
        Hi, di = c["index_n_heads"], c["index_head_dim"]
        out += [(P + "self_attn.indexer.wq_b.weight", (Hi * di, rq), False),
                (P + "self_attn.indexer.wk.weight", (di, D), False),
                (P + "self_attn.indexer.k_norm.weight", (di,), True),
                (P + "self_attn.indexer.k_norm.bias", (di,), True),
                (P + "self_attn.indexer.weights_proj.weight", (Hi, D), True)]
    out += [(P + "post_attention_layernorm.weight", (D,), True)]
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


def model_tensors(c: dict) -> Iterator[tuple]:
    V, D = c["vocab_size"], c["dim"]
    yield ("model.embed_tokens.weight", (V, D), False)
    for layer in range(c["n_layers"]):
        yield from layer_tensors(c, layer)
    yield ("model.norm.weight", (D,), True)
    yield ("lm_head.weight", (V, D), False)
    if c["n_mtp_layers"]:  # the MTP module (DeepSeek-V3 §2.2): input norms, projection, block, head norm
        P = f"model.layers.{c['n_layers']}."
        yield from [(P + "enorm.weight", (D,), True), (P + "hnorm.weight", (D,), True),
                    (P + "eh_proj.weight", (D, 2 * D), False)]
        yield from layer_tensors(c, c["n_layers"])
        yield (P + "shared_head.norm.weight", (D,), True)


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


def mtp_copies(c: dict) -> tuple:
    """The MTP module's embedding and output head, which DeepSeek-V3 §2.2 shares with the main model."""
    P = f"model.layers.{c['n_layers']}."
    return P + "embed_tokens.weight", P + "shared_head.head.weight"


def is_skipped(c: dict, name: str) -> bool:
    """Layers past those stored (the MTP module without --mtp, DeepSeek-V3 §2.2; MTP depths past the
    first), and with --mtp the module's copies of the embedding and head (check_mtp)."""
    m = LAYER_RE.match(name)
    return ((m is not None and int(m.group(1)) >= c["n_layers"] + c["n_mtp_layers"])
            or name.endswith(IGNORED_SUFFIXES) or (c["n_mtp_layers"] > 0 and name in mtp_copies(c)))


def same_bytes(a: SourceTensor, b: SourceTensor) -> bool:
    if (a.dtype, a.shape) != (b.dtype, b.shape):
        return False
    with open_input(a.path, "safetensors file") as fa, open_input(b.path, "safetensors file") as fb:
        for at in range(0, a.nbytes, 1 << 26):
            fa.seek(a.start + at)
            fb.seek(b.start + at)
            if fa.read(min(1 << 26, a.nbytes - at)) != fb.read(min(1 << 26, a.nbytes - at)):
                return False
    return True


def check_mtp(c: dict, tensors: dict) -> None:
    """--mtp: the checkpoint has an MTP module, and its copies of the embedding and head (where it
    stores them) equal the main model's, since the file stores them once, as the paper shares them."""
    P = f"model.layers.{c['n_layers']}."
    if P + "eh_proj.weight" not in tensors:
        fail(f"--mtp: the checkpoint has no MTP module (no {P}eh_proj.weight)")
    head = "lm_head.weight" if "lm_head.weight" in tensors else "model.embed_tokens.weight"
    for copy, main in zip(mtp_copies(c), ("model.embed_tokens.weight", head)):
        if copy in tensors and main in tensors and not same_bytes(tensors[copy], tensors[main]):
            fail(f"--mtp: {copy} differs from {main}; the file stores the main model's, shared with the MTP module")


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
    if scale.dtype not in ("F32", "BF16", "F16", "F8_E8M0"):
        fail(f"{name}{SCALE_SUFFIX} has unsupported dtype {scale.dtype}")
    return scale


def plan_export(c: dict, tensors: dict, out_type: int, blob: Optional[bytes]) -> list:
    # A config of 65536 layers of 65536 experts passes run.c's limits, but its list of tensors
    # would not fit in memory: stop listing once it is far longer than the checkpoint.
    expected = []
    for t in model_tensors(c):
        expected.append(t)
        if len(expected) > 2 * len(tensors) + 64:
            fail(f"config.json describes a model of more than {len(expected) - 1} tensors "
                 f"(num_hidden_layers {c['n_layers']}, n_routed_experts {c['n_routed_experts']}) "
                 f"but the checkpoint has {len(tensors)}")
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
        return -(-shape[0] // PANEL_ROWS) * PANEL_ROWS * -(-shape[1] // QK) * BLOCK_BYTES[ttype]
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
    """float8_e4m3fn byte -> float32 (the OCP FP8 E4M3 format; DeepSeek-V3 §3.3, the official
    inference/kernel.py weight_dequant): no infinities, 0x7f/0xff are NaN."""
    b = np.arange(256)
    sign, exp, man = b >> 7, (b >> 3) & 15, b & 7
    mag = np.where(exp == 0, np.ldexp(man / 8.0, -6), np.ldexp(1.0 + man / 8.0, exp - 7))
    value = np.where(sign == 1, -mag, mag)
    value[(exp == 15) & (man == 7)] = np.nan
    return value.astype(np.float32)


FP8_TABLE = fp8_e4m3_table()
NUMPY_DTYPE = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
               "F8_E4M3": np.dtype("u1"), "F8_E8M0": np.dtype("u1")}


def read_raw(f: BinaryIO, t: SourceTensor, first_row: int, n_rows: int) -> bytes:
    row_bytes = t.nbytes // t.shape[0] if t.shape and t.shape[0] else 0
    try:
        f.seek(t.start + first_row * row_bytes)
        data = f.read(n_rows * row_bytes)
    except OSError as e:  # an OSError while writing is the output's (write_atomically)
        fail(f"cannot read {t.path}: {e.strerror or e}")
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
    if dtype == "F8_E8M0":  # an FP8 block scale 2^(b - 127), 255 = NaN (scale_fmt ue8m0; llama.cpp's _e8m0_to_float)
        return np.where(x == 255, np.float32(np.nan), np.ldexp(np.float32(1), x.astype(np.int32) - 127))
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


def quant_blocks(x: np.ndarray) -> np.ndarray:
    """(n, cols) -> (n, nb, 32): the row's blocks, the last one zero-padded."""
    n, cols = x.shape
    nb = -(-cols // QK)
    padded = np.zeros((n, nb * QK), dtype=np.float32)
    padded[:, :cols] = x
    return padded.reshape(n, nb, QK)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def quantize(x: np.ndarray, ttype: int) -> bytes:
    """(n, cols) float32 rows -> Q8 or Q4 panels of 16 interleaved rows (layout in the module docstring)."""
    g = quant_blocks(x)
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
        half = QK // 2
        q = q[..., :half] | (q[..., half:] << 4)
    return interleave(d_bits, q)


def interleave(d_bits: np.ndarray, q: np.ndarray) -> bytes:
    """Scales (n, nb) and q bytes (n, nb, 32 or 16) of n rows -> panels of 16 rows, zero rows padding
    the last one: per panel the scales (nb, 16), then the q bytes as (nb, pieces, 16 rows, 4)."""
    n, nb, qb = q.shape
    panels = -(-n // PANEL_ROWS)
    pad = panels * PANEL_ROWS - n
    d = np.pad(d_bits.astype("<u2"), ((0, pad), (0, 0))).reshape(panels, PANEL_ROWS, nb).transpose(0, 2, 1)
    q = np.pad(q, ((0, pad), (0, 0), (0, 0))).reshape(panels, PANEL_ROWS, nb, qb // 4, 4).transpose(0, 2, 3, 1, 4)
    d = np.ascontiguousarray(d).view(np.uint8).reshape(panels, -1)
    return np.concatenate([d, np.ascontiguousarray(q).reshape(panels, -1)], axis=1).tobytes()


def dequantize(raw: bytes, ttype: int, rows: int, cols: int) -> np.ndarray:
    """Inverse of quantize (for tests and tools): Q8/Q4 bytes -> (rows, cols) float32."""
    nb, qb = -(-cols // QK), BLOCK_BYTES[ttype] - 2
    g = np.frombuffer(raw, dtype=np.uint8).reshape(-1, PANEL_ROWS * nb * (2 + qb))
    d = bf16_bits_to_f32(np.ascontiguousarray(g[:, :PANEL_ROWS * nb * 2]).view("<u2").reshape(-1, nb, PANEL_ROWS))
    b = g[:, PANEL_ROWS * nb * 2:].reshape(-1, nb, qb // 4, PANEL_ROWS, 4).transpose(0, 3, 1, 2, 4)
    b = b.reshape(-1, nb, qb)[:rows]
    d = d.transpose(0, 2, 1).reshape(-1, nb)[:rows]
    if ttype == Q8:
        q = b.view(np.int8).astype(np.float32)
    else:
        q = np.concatenate([b & 15, b >> 4], axis=2).astype(np.float32) - 8
    return (q * d[..., None]).reshape(rows, nb * QK)[:, :cols]


def rows_per_chunk(t: OutTensor) -> int:
    cols = t.shape[1] if len(t.shape) == 2 else 1
    rows = max(1, CHUNK_ELEMENTS // cols)
    if t.type in BLOCK_BYTES:  # whole panels of interleaved rows
        rows = max(PANEL_ROWS, rows // PANEL_ROWS * PANEL_ROWS)
    if t.scale is not None:  # whole FP8 row blocks per chunk (128 is a multiple of PANEL_ROWS)
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
        with open_input(t.scale.path, "safetensors file") as f:
            raw = read_raw(f, t.scale, 0, t.scale.shape[0])
        scale = decode(raw, t.scale.dtype, t.scale.shape)
    step = rows_per_chunk(t)
    with open_input(src.path, "safetensors file") as f:
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


class Stopped(BaseException):
    """SIGINT, SIGTERM or SIGHUP, raised in the main thread so that the temporary file is removed
    on the way out (a BaseException, like KeyboardInterrupt: no `except ExportError` stops it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def on_stop_signal(signum: int, frame) -> None:
    for s in STOP_SIGNALS:  # a second signal must not cut the clean-up short
        signal.signal(s, signal.SIG_IGN)
    raise Stopped(signum)


@contextlib.contextmanager
def stop_signals_blocked():
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def check_output(path: str, inputs: list) -> None:
    """Refuse an output path that is not a regular file (a directory, a FIFO, a device: it is
    never replaced) or that is one of the inputs (same device and inode, through any symlink
    or hard link)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:  # also a dangling symlink, which the rename replaces
        return
    except OSError as e:
        fail(f"cannot stat the output path {path}: {e.strerror or e}")
    if stat.S_ISDIR(st.st_mode):
        fail(f"output path is a directory: {path}")
    if not stat.S_ISREG(st.st_mode):
        fail(f"output path {path} exists and is not a regular file; it is left alone")
    for p in inputs:
        try:
            s = os.stat(p)
        except OSError:
            continue
        if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino):
            fail(f"output path {path} is the input file {p}")


class WholePieces:
    """A file writer that hands the file whole 2 MB pieces at 2 MB offsets (the rest at close). Linux (6.18 on
    ext4, measured) then keeps the written file in its page cache in 2 MB folios, which run.c maps with 2 MB
    pages; written in pieces under 2 MB it stays in 4 KB pages until evicted, and V2-Lite q4 generated about
    8% slower from such a mapping (a TLB miss every 4 KB of the weights' stream)."""
    PIECE = 2 << 20

    def __init__(self, f: BinaryIO):
        self.f = f
        self.pending = bytearray()

    def write(self, data) -> None:
        self.pending += data
        if len(self.pending) >= 8 * self.PIECE:
            n = len(self.pending) // self.PIECE * self.PIECE
            with memoryview(self.pending) as view:  # released before the bytearray shrinks
                self.f.write(view[:n])
            del self.pending[:n]

    def close(self) -> None:
        self.f.write(self.pending)
        self.pending = bytearray()


def write_atomically(path: str, write, inputs: list = ()) -> None:
    """Call write(f) on a temporary file next to `path`, then rename it to `path`. On any
    error, Ctrl-C, SIGTERM or SIGHUP the temporary file is removed and `path` is left untouched."""
    check_output(path, list(inputs))
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        try:
            with stop_signals_blocked():  # no signal between creating tmp and knowing its name
                fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".",
                                           suffix=".tmp")
        except OSError as e:
            fail(f"cannot create a file in {directory}: {e.strerror or e}")
        try:
            with os.fdopen(fd, "wb") as f:
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp makes 0600 files
                pieces = WholePieces(f)
                write(pieces)
                pieces.close()
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # a full disk, a file size limit, an I/O error
            fail(f"cannot write {path}: {e.strerror or e} (nothing was written)")
        try:
            os.replace(tmp, path)
        except OSError as e:
            fail(f"cannot rename {tmp} to {path}: {e.strerror or e}")
    except BaseException:
        if tmp is not None:
            with stop_signals_blocked():
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
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


# The files of a checkpoint that export.py reads besides the shards: the output may be none of them.
INPUT_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer.json",
               "tokenizer_config.json", "chat_template.jinja", "tiktoken.model")


def input_files(hf_dir: str) -> list:
    return ([os.path.join(hf_dir, n) for n in INPUT_FILES]
            + sorted(glob.glob(os.path.join(glob.escape(hf_dir), "tokenization_*.py"))))


def export_model(hf_dir: str, out_path: str, dtype: str, mtp: bool = False) -> None:
    c = load_config(hf_dir, mtp)
    tensors = load_checkpoint(hf_dir)
    if mtp:
        check_mtp(c, tensors)
    blob = tokenizer_blob(hf_dir)
    n_ids = count_tokens(hf_dir)
    if blob is not None and os.path.lexists(os.path.join(hf_dir, "tiktoken.model")):
        n_ids = struct.unpack_from("<I", blob, 8)[0]  # a tiktoken vocabulary: the tokenizer file's size
    c["n_tokens"] = n_tokens_of(n_ids, c["vocab_size"], blob)
    if blob is not None:
        h = fnv1a64(blob)
        c["tokenizer_hash_lo"], c["tokenizer_hash_hi"] = h & 0xFFFFFFFF, h >> 32
    plan = plan_export(c, tensors, DTYPES[dtype], blob)
    file_size = assign_offsets(plan)
    header = pack_header(c, plan)
    inputs = input_files(hf_dir) + sorted({t.path for t in tensors.values()})
    start = time.monotonic()
    write_atomically(out_path, lambda f: write_model(f, header, plan, file_size), inputs)
    print(f"export: wrote {out_path}: {len(plan)} tensors, {file_size / 1e6:.1f} MB, {dtype}, "
          f"{time.monotonic() - start:.1f} s", file=sys.stderr)


def export_tokenizer(hf_dir: str, out_path: str) -> None:
    blob = tokenizer_blob(hf_dir)
    if blob is None:
        fail(f"no tokenizer could be exported from {hf_dir}")
    write_atomically(out_path, lambda f: f.write(blob), input_files(hf_dir))


def main(argv: Optional[list] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="export.py",
        description="Export a HuggingFace DeepSeek-V2/V3 checkpoint to a seek.c model file.")
    parser.add_argument("hf_dir", help="directory with config.json and *.safetensors")
    parser.add_argument("out", help="output file (model.bin, or tokenizer.bin with --tokenizer)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="f32",
                        help="type of the 2-D weight matrices except the router (default f32)")
    parser.add_argument("--mtp", action="store_true",
                        help="keep the MTP module (DeepSeek-V3 multi-token prediction) for run --mtp")
    parser.add_argument("--tokenizer", action="store_true",
                        help="write only the tokenizer file")
    args = parser.parse_args(argv)
    for s in STOP_SIGNALS:
        signal.signal(s, on_stop_signal)
    try:
        if not os.path.isdir(args.hf_dir):
            fail(f"not a directory: {args.hf_dir}")
        if args.tokenizer:
            export_tokenizer(args.hf_dir, args.out)
        else:
            export_model(args.hf_dir, args.out, args.dtype, args.mtp)
    except ExportError as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"export.py: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        sys.exit(1)
    except MemoryError:
        print("export.py: error: out of memory", file=sys.stderr)
        sys.exit(1)
    except Stopped as e:
        print(f"export.py: stopped by {signal.Signals(e.signum).name}", file=sys.stderr)
        signal.signal(e.signum, signal.SIG_DFL)  # die of the signal, as the caller expects
        os.kill(os.getpid(), e.signum)
        sys.exit(128 + e.signum)


if __name__ == "__main__":
    main()
