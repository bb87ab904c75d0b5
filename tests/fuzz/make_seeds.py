"""Writes the seed corpora of the fuzz harnesses (tests/fuzz/corpus-model, -config, -tokenizer).

The seeds are tiny but valid inputs, so that mutations start deep inside the format:
model files exported by export.py from miniature checkpoints of tests/gen_checkpoints.py (a V2-style
and a V3-style router, F32 and BF16, one with an embedded tokenizer, one with V3.2's indexer), and tokenizer-harness inputs
(see fuzz_tokenizer.c: u16 text length, text, tokenizer file), and fuzz_config.c inputs (the config words
of each model seed, a type byte, some weight bytes). Run from anywhere:
    /usr/bin/python3 tests/fuzz/make_seeds.py
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

import export  # noqa: E402
import gen_checkpoints as G  # noqa: E402

TINY = dict(hidden_size=8, num_hidden_layers=2, vocab_size=32, num_attention_heads=2,
            kv_lora_rank=4, qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=4,
            intermediate_size=8, moe_intermediate_size=4, n_routed_experts=4, n_shared_experts=1,
            num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=1,
            max_position_embeddings=64)

SEEDS = {
    # name: (base variant, overrides, export dtype)
    "v2-bf16": ("v2", dict(TINY, q_lora_rank=4), "bf16"),
    "v2lite-f32": ("v2lite", dict(TINY, q_lora_rank=None, n_group=1, topk_group=1), "f32"),
    "v3-bf16-tok": ("v3", dict(TINY, q_lora_rank=4, vocab_size=300, _tokenizer_merges=12), "bf16"),
    "v3-bf16-mtp": ("v3", dict(TINY, q_lora_rank=4, num_nextn_predict_layers=1, _tokenizer_merges=0), "bf16"),  # --mtp
    "moonlight-f32": ("moonlight", dict(TINY, q_lora_rank=None, n_group=1, topk_group=1, bos_token_id=0,
                                        eos_token_id=1, _tokenizer_dir=None, _n_tokens=32,
                                        moe_layer_freq=2, first_k_dense_replace=0), "f32"),
    "v32-f32": ("v32", dict(TINY, q_lora_rank=4, index_n_heads=2, index_head_dim=4, index_topk=2), "f32"),
}

# Quantized types (once export.py has them): block-quantized matrices need inputs of 32k columns.
TINY32 = dict(TINY, hidden_size=32, kv_lora_rank=32, qk_nope_head_dim=8, v_head_dim=16, intermediate_size=32,
              moe_intermediate_size=32, q_lora_rank=32)
for q in ("q8", "q4"):
    if q in getattr(export, "DTYPES", {}):
        SEEDS[f"v3-{q}"] = ("v3", dict(TINY32, vocab_size=300, _tokenizer_merges=12), q)

TEXTS = [b"Hello world, 12345!\n", "  中文 テキスト\u2029 x".encode(), b"\xff\xe4\xb8 a\r\n\tb",
         b"<|EOT|> <\xef\xbd\x9cUser\xef\xbd\x9c> abc", b"0 1 2 3 255 256 300",
         "getUserName's XMLHttpRequest HE'S 'ſ 々〇 ǅx\u0301".encode(), b"[gMASK]<sop><|user|> x<|im_end|>",
         "  \r\n\t 123456 ${x}\n\n".encode()]
# Added tokens that overlap (prefixes, suffixes, one inside another; odd ones normalized) for the Aho-Corasick
# search, with a text that makes them compete: seed-overlap.bin.
OVERLAP = ["abcd", "bc", "b", "abcde", "cdx", "aaab", "dab", "aaaa", "<|EOT|>x"]
OVERLAP_TEXT = b"aaaabcdabcdex bc abcde cdxyz aaab <|EOT|>x"


def export_seed(name: str, base: str, overrides: dict, dtype: str, tmp: str) -> bytes:
    G.VARIANTS[name] = dict(G.VARIANTS[base], **overrides)
    hf = G.write_checkpoint(name, os.path.join(tmp, name))
    out = os.path.join(tmp, name + ".bin")
    mtp = ["--mtp"] if overrides.get("num_nextn_predict_layers") else []
    subprocess.run([sys.executable, os.path.join(ROOT, "export.py"), hf, out, "--dtype", dtype, *mtp],
                   check=True, capture_output=True)
    with open(out, "rb") as f:
        return f.read()


def main() -> None:
    model_dir = os.path.join(HERE, "corpus-model")
    tok_dir = os.path.join(HERE, "corpus-tokenizer")
    config_dir = os.path.join(HERE, "corpus-config")
    os.makedirs(config_dir, exist_ok=True)
    os.makedirs(model_dir, exist_ok=True)
    os.makedirs(tok_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (base, overrides, dtype) in SEEDS.items():
            blob = export_seed(name, base, overrides, dtype, tmp)
            with open(os.path.join(model_dir, f"seed-{name}.bin"), "wb") as f:
                f.write(blob)
            words = blob[12:12 + 160]
            with open(os.path.join(config_dir, f"seed-{name}.bin"), "wb") as f:
                f.write(words + bytes([dtype == "bf16"]) + blob[-301:-1])
        tok = export.build_tokenizer(os.path.join(tmp, "v3-bf16-tok"))
        tj_path = os.path.join(tmp, "v3-bf16-tok", "tokenizer.json")
        with open(tj_path, encoding="utf-8") as f:
            tj = json.load(f)
        n = 1 + max(list(tj["model"]["vocab"].values()) + [a["id"] for a in tj["added_tokens"]])
        tj["added_tokens"] += [{"id": n + k, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                                "normalized": k % 2 == 1, "special": False} for k, c in enumerate(OVERLAP)]
        with open(tj_path, "w", encoding="utf-8") as f:
            json.dump(tj, f)
        overlap = export.build_tokenizer(os.path.join(tmp, "v3-bf16-tok"))
    for i, text in enumerate(TEXTS):
        # the same vocabulary with each pre-tokenizer (V3 1, V2 2, GLM 3, Kimi 4), chat family (0..6) and
        # ignore_merges (header flag 4) in turn
        variant = bytearray(tok)
        variant[28:32] = struct.pack("<I", struct.unpack_from("<I", tok, 28)[0] | (4 if i % 2 else 0))
        variant[32:36] = struct.pack("<I", 1 + i % 4)
        variant[36:40] = struct.pack("<I", i % 7)
        with open(os.path.join(tok_dir, f"seed-{i}.bin"), "wb") as f:
            f.write(struct.pack("<H", len(text)) + text + bytes(variant))
    with open(os.path.join(tok_dir, "seed-overlap.bin"), "wb") as f:
        f.write(struct.pack("<H", len(OVERLAP_TEXT)) + OVERLAP_TEXT + overlap)
    print(f"wrote {len(SEEDS)} model and config seeds, {len(TEXTS) + 1} tokenizer seeds")


if __name__ == "__main__":
    main()
