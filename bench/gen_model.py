#!/usr/bin/env python3
"""Write a random-weight model with the exact DeepSeek-V2-Lite shape straight into the seek.c
format (v2, Q8 or Q4 weights), without safetensors: for benchmarks, where only the shapes, the
types and the routing (random, through a real f32 router) matter.

    python3 bench/gen_model.py q8 bench/models/v2lite-q8.bin
    python3 bench/gen_model.py q4 bench/models/v32lite-q4.bin --v32

--v32 gives it DeepSeek-V3.2's graph at that size: V3.2's q LoRA (rank 1536) and its lightning
indexer in every layer (64 heads of 128, index_topk 2048; wq_b and wk quantized, k_norm and
weights_proj F32), so DeepSeek Sparse Attention can be timed at V2-Lite's scale.

27 layers (the first dense), hidden 2048, 16 heads, no q LoRA, kv_lora 512, rope 64, nope 128,
v 128, 64 routed experts top-6 + 2 shared, moe_intermediate 1408, intermediate 10944, vocab 102400,
YaRN as in the real config. Quantized blocks hold uniform random ints with one scale per tensor
chosen so that weights have rms ~ 0.5 / sqrt(cols); norms are 1; the router is N(0, 1/D).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import export as E  # noqa: E402  (format constants, tensor order, header packing)

V2_LITE = dict(
    dim=2048, n_layers=27, vocab_size=102400, n_heads=16, q_lora_rank=0, kv_lora_rank=512,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, intermediate_size=10944,
    moe_intermediate_size=1408, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=6,
    n_group=1, topk_group=1, topk_method=0, scoring_func=0, norm_topk_prob=0,
    routed_scaling_factor=1.0, first_k_dense_replace=1, moe_layer_freq=1, rope_theta=10000.0,
    rope_type=1, rope_factor=40.0, rope_original_max_pos=4096, rope_beta_fast=32.0,
    rope_beta_slow=1.0, rope_mscale=0.707, rope_mscale_all_dim=0.707, rms_norm_eps=1e-6,
    max_position_embeddings=163840, bos_token_id=100000, eos_token_id=100001, n_mtp_layers=0,
    n_tokens=102400, tokenizer_hash_lo=0, tokenizer_hash_hi=0, index_n_heads=0, index_head_dim=0,
    index_topk=0, eos_token_id_2=-1, eos_token_id_3=-1, eos_token_id_4=-1,
    **{name: 0 for name, _ in E.CONFIG_WORDS[44:]})
V32 = dict(q_lora_rank=1536, index_n_heads=64, index_head_dim=128, index_topk=2048)

BLOCKS_PER_CHUNK = 1 << 20


def block_chunks(t: E.OutTensor, pool: np.ndarray, rng: np.random.Generator):
    """Random Q8/Q4 blocks of one matrix (panels of 16 interleaved rows, as export.py lays them out),
    a chunk of panels at a time."""
    rows, cols = t.shape
    nb, qbytes = -(-cols // E.QK), E.BLOCK_BYTES[t.type] - 2
    spread = 73.9 if t.type == E.Q8 else 4.6  # rms of a uniform random int8 / nibble - 8
    d = np.float32(0.5 / np.sqrt(cols) / spread)
    scales = np.tile(E.to_bf16(np.array([d], np.float32)).astype("<u2").view(np.uint8), E.PANEL_ROWS * nb)
    panels, per_chunk = -(-rows // E.PANEL_ROWS), max(1, BLOCKS_PER_CHUNK // (E.PANEL_ROWS * nb))
    for g0 in range(0, panels, per_chunk):
        k, q = min(per_chunk, panels - g0), E.PANEL_ROWS * nb * qbytes  # panels, q bytes per panel
        chunk = np.empty((k, scales.size + q), np.uint8)
        chunk[:, :scales.size] = scales
        start = int(rng.integers(0, pool.size - k * q))
        chunk[:, scales.size:] = pool[start:start + k * q].reshape(k, q)
        yield chunk.tobytes()


def write(out_path: str, dtype: str, n_layers: int, v32: bool = False) -> None:
    c = dict(V2_LITE, n_layers=n_layers, **(V32 if v32 else {}))
    qtype = E.DTYPES[dtype]
    plan = [E.OutTensor(name, E.F32 if f32 or len(shape) == 1 else qtype, shape)
            for name, shape, f32 in E.model_tensors(c)]
    for t in plan:
        t.nbytes = E.tensor_nbytes(t.type, t.shape)
    file_size = E.assign_offsets(plan)
    header = E.pack_header(c, plan)
    rng = np.random.default_rng(0)
    pool = np.frombuffer(rng.bytes((BLOCKS_PER_CHUNK + 1) * 64), np.uint8)
    start = time.monotonic()

    def body(f) -> None:
        f.write(header)
        pos = len(header)
        for i, t in enumerate(plan):
            f.write(b"\0" * (t.offset - pos))
            if t.type == qtype:
                for chunk in block_chunks(t, pool, rng):
                    f.write(chunk)
            elif len(t.shape) == 1:  # norms 1, the indexer's LayerNorm bias 0
                f.write((np.zeros if t.name.endswith("bias") else np.ones)(t.shape, "<f4").tobytes())
            else:  # the router, the indexer's weights_proj
                f.write((rng.standard_normal(t.shape) / np.sqrt(t.shape[1])).astype("<f4").tobytes())
            pos = t.offset + t.nbytes
            if i % 200 == 0:
                print(f"gen_model: {out_path}: {pos / 1e9:.1f} / {file_size / 1e9:.1f} GB, "
                      f"{time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    E.write_atomically(out_path, body)
    print(f"gen_model: wrote {out_path} ({file_size / 1e9:.2f} GB) in {time.monotonic() - start:.0f} s",
          file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description="random DeepSeek-V2-Lite-shaped model in seek.c format")
    ap.add_argument("dtype", choices=("q8", "q4"))
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=27,
                    help="fewer layers give a small file for quick kernel experiments (default 27, the real shape)")
    ap.add_argument("--v32", action="store_true", help="DeepSeek-V3.2's graph: q LoRA and the lightning indexer")
    args = ap.parse_args()
    write(args.out, args.dtype, args.layers, args.v32)


if __name__ == "__main__":
    main()
