#!/usr/bin/env python3
"""Independent numpy reference forward pass for DeepSeek-V2/V3 HF checkpoints (and the families with their
graph: Moonlight / Kimi-K2, GLM-4.7-Flash).

Written from the DeepSeek-V2/V3 papers and the reference code (the HF modeling_deepseek.py shipped with
the checkpoints, the official inference/model.py), with HuggingFace remote-code semantics:
naive (expanded K/V) MLA with full causal attention, interleaved-pair RoPE with YaRN, every router;
for DeepSeek-V3.2 (model_type deepseek_v32) the lightning indexer and DeepSeek Sparse Attention, as the
DeepSeek-V3.2-Exp report and the official V3.2 inference/model.py (after the 2025-11 indexer RoPE fix)
define them: MLA attends only to the index_topk causal positions the indexer scores best.
It reads the HF directory directly (its own safetensors reader: F32, F16, BF16, F8_E4M3 with
128x128 weight_scale_inv blocks), skips MTP layers (index >= num_hidden_layers), and computes in
float64. It shares no code with export.py or run.c on purpose.

    reference_logits(hf_dir, token_ids) -> (T, vocab_size) float64 logits, row t after token t
    reference.py <hf_dir> 5,17,3          prints the argmax per position
"""
import argparse
import json
import math
import os
import struct

import numpy as np

# ----------------------------------------------------------------------------
# safetensors reading and dtype decoding (FP8 as DeepSeek-V3's inference/kernel.py weight_dequant)


def bf16_to_f32(u16: np.ndarray) -> np.ndarray:
    return (u16.astype(np.uint32) << 16).view(np.float32)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 (nearest-even) -> float32; what `export.py --dtype bf16` stores."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32) << 16
    return r.view(np.float32)


def e4m3_table() -> np.ndarray:
    """float value of every float8_e4m3fn byte (OCP FP8 E4M3: bias 7, no infinities, 0x7f/0xff NaN)."""
    t = np.empty(256, np.float32)
    for b in range(256):
        s, e, m = b >> 7, (b >> 3) & 15, b & 7
        if e == 15 and m == 7:
            v = float("nan")
        elif e == 0:
            v = 2.0 ** -6 * (m / 8)
        else:
            v = 2.0 ** (e - 7) * (1 + m / 8)
        t[b] = -v if s else v
    return t


E4M3 = e4m3_table()


def dequant_fp8_blocks(q: np.ndarray, scale_inv: np.ndarray, block: int = 128) -> np.ndarray:
    """W[i, j] = fp8(Q[i, j]) * S[i // block, j // block] (multiplied; partial edge blocks), in float32."""
    m, n = q.shape
    gm, gn = -(-m // block), -(-n // block)
    if scale_inv.shape != (gm, gn):
        raise ValueError(f"scale grid {scale_inv.shape} != {(gm, gn)} for weight {q.shape}")
    s = np.repeat(np.repeat(scale_inv.astype(np.float32), block, 0), block, 1)[:m, :n]
    return E4M3[q] * s


class SafeTensors:
    """All tensors of an HF directory (single file or sharded with an index), read on demand."""

    def __init__(self, hf_dir: str):
        self.where = {}  # name -> (path, dtype, shape, absolute offset, nbytes)
        idx = os.path.join(hf_dir, "model.safetensors.index.json")
        if os.path.exists(idx):
            with open(idx) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = ["model.safetensors"]
        for fn in files:
            path = os.path.join(hf_dir, fn)
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                b, e = info["data_offsets"]
                self.where[name] = (path, info["dtype"], tuple(info["shape"]), 8 + n + b, e - b)

    def names(self):
        return self.where.keys()

    def raw(self, name: str) -> np.ndarray:
        path, dtype, shape, off, nbytes = self.where[name]
        np_dtype = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F8_E4M3": "u1", "F8_E8M0": "u1"}[dtype]
        with open(path, "rb") as f:
            f.seek(off)
            buf = f.read(nbytes)
        return np.frombuffer(buf, dtype=np_dtype).reshape(shape)

    def get_f32(self, name: str) -> np.ndarray:
        """The tensor as float32 (dequantising FP8 with its weight_scale_inv)."""
        dtype = self.where[name][1]
        x = self.raw(name)
        if dtype == "BF16":
            return bf16_to_f32(x)
        if dtype == "F8_E4M3":
            return dequant_fp8_blocks(x, self.get_f32(name + "_scale_inv"))
        if dtype == "F8_E8M0":  # a power-of-two scale, 2^(b - 127); 255 is NaN (OCP MX E8M0)
            return np.where(x == 255, np.nan, np.ldexp(1.0, x.astype(np.int32) - 127)).astype(np.float32)
        return x.astype(np.float32)


# ----------------------------------------------------------------------------
# config (HF config.json), RoPE and YaRN (HF modeling_deepseek.py, inference/model.py)


def rope_config(cfg: dict) -> dict:
    """Both spellings: `rope_theta` + `rope_scaling`, or `rope_parameters` (with rope_theta inside),
    and both `type` and `rope_type`."""
    rs = cfg.get("rope_scaling")
    rp = cfg.get("rope_parameters") or {}
    if rs is None and rp:
        rs = rp
    theta = cfg.get("rope_theta", rp.get("rope_theta", 10000.0))
    kind = (rs or {}).get("type", (rs or {}).get("rope_type"))
    if kind in (None, "default"):
        return {"theta": float(theta), "yarn": None}
    if kind != "yarn":
        raise ValueError(f"unsupported rope type {kind}")
    return {"theta": float(theta), "yarn": rs}


def yarn_mscale(s: float, m: float) -> float:
    return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0


def rope_frequencies(rope: dict, d: int):
    """theta_i for pair i = 0..d/2-1, and the cos/sin multiplier (HF remote DeepseekYarnRotaryEmbedding)."""
    base = rope["theta"]
    f = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    y = rope["yarn"]
    if y is None:
        return f, 1.0
    s = float(y["factor"])
    L0 = float(y.get("original_max_position_embeddings", 4096))
    b_fast, b_slow = float(y.get("beta_fast", 32)), float(y.get("beta_slow", 1))

    def corr(n_rot):
        return d * math.log(L0 / (n_rot * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(corr(b_fast)), 0)
    high = min(math.ceil(corr(b_slow)), d - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0.0, 1.0)
    theta = (f / s) * ramp + f * (1.0 - ramp)
    # HF remote defaults: mscale=1, mscale_all_dim=0 (our generated configs always carry both).
    m_cs = yarn_mscale(s, float(y.get("mscale", 1))) / yarn_mscale(s, float(y.get("mscale_all_dim", 0)))
    return theta, m_cs


def softmax_scale(cfg: dict, rope: dict, with_mscale: bool = True) -> float:
    scale = (cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"]) ** -0.5
    y = rope["yarn"]
    if with_mscale and y is not None and y.get("mscale_all_dim", 0):
        m = yarn_mscale(float(y["factor"]), float(y["mscale_all_dim"]))
        scale *= m * m
    return scale


def apply_rope(x: np.ndarray, pos: np.ndarray, theta: np.ndarray, m_cs: float, halves: bool = False) -> np.ndarray:
    """Rotate adjacent pairs (2i, 2i+1) by pos*theta_i; with halves (NeoX style, the V3.2 indexer's
    apply_rotary_emb(..., interleaved=False)) the pairs (i, i + dr/2). x: (T, ..., dr), pos: (T,)."""
    ang = pos[:, None] * theta[None, :]                      # (T, dr/2)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (theta.size,)
    c, s = (np.cos(ang) * m_cs).reshape(shape), (np.sin(ang) * m_cs).reshape(shape)
    first, second = (slice(0, theta.size), slice(theta.size, None)) if halves else (slice(0, None, 2), slice(1, None, 2))
    a, b = x[..., first], x[..., second]
    out = np.empty_like(x)
    out[..., first] = a * c - b * s
    out[..., second] = a * s + b * c
    return out


def hadamard(n: int) -> np.ndarray:
    """Sylvester's Hadamard matrix H_n (n a power of two), scaled by n^-1/2: orthogonal."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(n)


# ----------------------------------------------------------------------------
# blocks


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return w * x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)


def layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    return w * (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + eps) + b


def silu(z: np.ndarray) -> np.ndarray:
    return z / (1.0 + np.exp(-z))


def mlp(x: np.ndarray, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> np.ndarray:
    return (silu(x @ gate.T) * (x @ up.T)) @ down.T


def topk_indices(v: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest, lowest index first among ties."""
    return np.argsort(-v, kind="stable")[:k]


def scoring_func(cfg: dict) -> str:
    """DeepSeek's MoEGate defaults to softmax. GLM-4.7-Flash's config.json has no scoring_func, but its router
    (transformers' Glm4MoeLiteTopkRouter, noaux_tc) always takes the sigmoid."""
    return cfg.get("scoring_func") or ("sigmoid" if cfg.get("model_type") == "glm4_moe_lite" else "softmax")


def route(cfg: dict, z: np.ndarray, bias, group_limit: bool = True, use_bias: bool = True):
    """One token's router (HF modeling_deepseek.py MoEGate, -inf group mask as inference/model.py). z: router logits (E,). Returns (expert ids, weights)."""
    E, K = cfg["n_routed_experts"], cfg["num_experts_per_tok"]
    n_group, topk_group = cfg.get("n_group") or 1, cfg.get("topk_group") or 1
    method = cfg.get("topk_method") or "greedy"
    if scoring_func(cfg) == "softmax":
        s = np.exp(z - z.max())
        s /= s.sum()
    else:
        s = 1.0 / (1.0 + np.exp(-z))
    c = s + bias if (method == "noaux_tc" and use_bias) else s.copy()
    if method in ("group_limited_greedy", "noaux_tc") and group_limit and n_group > 1:
        g = c.reshape(n_group, E // n_group)
        if method == "noaux_tc":
            gscore = np.sort(g, axis=1)[:, -2:].sum(axis=1)   # sum of the two largest
        else:
            gscore = g.max(axis=1)
        keep = topk_indices(gscore, topk_group)
        mask = np.full(n_group, True)
        mask[keep] = False
        c = np.where(np.repeat(mask, E // n_group), -np.inf, c)  # dropped groups: -inf, not 0
    elif method not in ("greedy", "group_limited_greedy", "noaux_tc"):
        raise ValueError(f"unknown topk_method {method}")
    idx = topk_indices(c, K)
    w = s[idx].copy()                                          # weights from unbiased scores
    if cfg.get("norm_topk_prob") and K > 1:
        w = w / (w.sum() + 1e-20)
    return idx, w * float(cfg.get("routed_scaling_factor") or 1.0)


def is_moe_layer(cfg: dict, l: int) -> bool:
    """HF modeling_deepseek.py's rule; transformers' GLM-4.7-Flash code reads mlp_layer_types instead when a
    config has it ("dense" / "sparse" per layer)."""
    if cfg.get("mlp_layer_types") is not None:
        return cfg["mlp_layer_types"][l] == "sparse"
    return bool(cfg.get("n_routed_experts")) and l >= (cfg.get("first_k_dense_replace") or 0) \
        and l % (cfg.get("moe_layer_freq") or 1) == 0


# ----------------------------------------------------------------------------
# model


class Reference:
    """Weights of the main model (MTP layers skipped) as float64, optionally bf16-rounded the way
    `export.py --dtype bf16` rounds them (every 2-D weight except the router; 1-D stay exact)."""

    def __init__(self, hf_dir: str, bf16_weights: bool = False):
        with open(os.path.join(hf_dir, "config.json")) as f:
            self.cfg = cfg = json.load(f)
        self.rope = rope_config(cfg)
        st = SafeTensors(hf_dir)
        L = cfg["num_hidden_layers"]
        self.w = {}
        for name in st.names():
            if name.endswith("_scale_inv"):
                continue
            if name.startswith("model.layers."):
                if int(name.split(".")[2]) >= L:
                    continue  # MTP module (DeepSeek-V3 §2.2)
            x = st.get_f32(name)
            f32 = name.endswith(("mlp.gate.weight", "indexer.weights_proj.weight"))  # exported as F32
            if bf16_weights and x.ndim == 2 and not f32:
                x = round_to_bf16(x)
            self.w[name] = x.astype(np.float64)

    def indexer(self, l: int, x: np.ndarray, pos: np.ndarray, rope_halves: bool = True,
                rotate: bool = False, margins: list = None) -> np.ndarray:
        """DeepSeek Sparse Attention's selection for every query: (T, T) bool, True where MLA may
        attend. The lightning indexer (DeepSeek-V3.2-Exp report; official inference/model.py Indexer)
        scores I[s, t] = sum_h w_h(s) d^-1/2 ReLU(q_h(s) . k_t) with q = W_qb^idx c_Q (c_Q: MLA's
        normed query latent), k = LayerNorm(W_k x) (with bias, eps 1e-6), RoPE on the FIRST
        qk_rope_head_dim values of q and k in halves (NeoX style), the same YaRN frequencies as MLA,
        w = weights_proj(x) * n_heads^-1/2. Query s keeps the min(index_topk, s+1) best of t <= s
        (lowest index first among equal scores). rope_halves=False rotates adjacent pairs instead
        (the pre-fix code: a negative control); rotate=True applies the Hadamard rotation of the
        official code to q and k (orthogonal, so the scores do not change). `margins` collects, per
        query that drops positions, the score gap between its last kept and first dropped position."""
        cfg, w, p = self.cfg, self.w, f"model.layers.{l}.self_attn."
        Hi, d, topk = cfg["index_n_heads"], cfg["index_head_dim"], cfg["index_topk"]
        dr, T = cfg["qk_rope_head_dim"], x.shape[0]
        cq = rmsnorm(x @ w[p + "q_a_proj.weight"].T, w[p + "q_a_layernorm.weight"], 1e-6)
        q = (cq @ w[p + "indexer.wq_b.weight"].T).reshape(T, Hi, d)
        k = layernorm(x @ w[p + "indexer.wk.weight"].T, w[p + "indexer.k_norm.weight"],
                      w[p + "indexer.k_norm.bias"], 1e-6)
        theta, m_cs = rope_frequencies(self.rope, dr)
        q = np.concatenate([apply_rope(q[..., :dr], pos, theta, m_cs, rope_halves), q[..., dr:]], axis=-1)
        k = np.concatenate([apply_rope(k[:, :dr], pos, theta, m_cs, rope_halves), k[:, dr:]], axis=-1)
        if rotate:
            q, k = q @ hadamard(d).T, k @ hadamard(d).T
        weights = (x @ w[p + "indexer.weights_proj.weight"].T) * Hi ** -0.5     # (T, Hi)
        score = np.einsum("sh,sht->st", weights * d ** -0.5, np.maximum(np.einsum("shd,td->sht", q, k), 0.0))
        keep = np.zeros((T, T), bool)
        for s in range(T):
            n = min(topk, s + 1)
            order = np.argsort(-score[s, :s + 1], kind="stable")
            keep[s, order[:n]] = True
            if margins is not None and n < s + 1:
                margins.append(score[s, order[n - 1]] - score[s, order[n]])
        return keep

    def attention(self, l: int, x: np.ndarray, pos: np.ndarray, absorbed: bool = False,
                  yarn_mscale: bool = True, bf16_cache: bool = False, probs: dict = None,
                  keep: np.ndarray = None) -> np.ndarray:
        """MLA over the whole causal sequence, or only over the positions `keep` (T, T) allows.
        x: (T, D) normed input. bf16_cache: c and the rotated k_pe (what run.c caches) are rounded to
        bf16 as `--cache-type bf16` stores them; probs[l] gets the (H, T, T) attention probabilities
        when probs is a dict."""
        cfg, w, p = self.cfg, self.w, f"model.layers.{l}.self_attn."
        H, r = cfg["num_attention_heads"], cfg["kv_lora_rank"]
        dn, dr, dv = cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        T = x.shape[0]
        if cfg.get("q_lora_rank"):
            cq = rmsnorm(x @ w[p + "q_a_proj.weight"].T, w[p + "q_a_layernorm.weight"], 1e-6)
            q = cq @ w[p + "q_b_proj.weight"].T
        else:
            q = x @ w[p + "q_proj.weight"].T
        q = q.reshape(T, H, dn + dr)                      # per head [nope | rope]
        q_nope, q_pe = q[..., :dn], q[..., dn:]
        a = x @ w[p + "kv_a_proj_with_mqa.weight"].T      # (T, r + dr)
        c = rmsnorm(a[:, :r], w[p + "kv_a_layernorm.weight"], 1e-6)   # latent only
        k_pe = a[:, r:]                                   # shared by all heads, not normed
        theta, m_cs = rope_frequencies(self.rope, dr)
        q_pe = apply_rope(q_pe, pos, theta, m_cs)
        k_pe = apply_rope(k_pe, pos, theta, m_cs)
        if bf16_cache:
            c, k_pe = round_to_bf16(c).astype(np.float64), round_to_bf16(k_pe).astype(np.float64)
        kvb = w[p + "kv_b_proj.weight"].reshape(H, dn + dv, r)   # per head [W_UK | W_UV]
        W_UK, W_UV = kvb[:, :dn, :], kvb[:, dn:, :]
        scale = softmax_scale(cfg, self.rope, yarn_mscale)
        if absorbed:   # W_UK into the query, W_UV after (DeepSeek-V2 §2.1.2)
            q_lat = np.einsum("thd,hdr->thr", q_nope, W_UK)
            scores = np.einsum("thr,sr->hts", q_lat, c) + np.einsum("thd,sd->hts", q_pe, k_pe)
        else:          # expanded keys and values (DeepSeek-V2 §2.1.2-2.1.3)
            k_nope = np.einsum("hdr,sr->shd", W_UK, c)
            scores = np.einsum("thd,shd->hts", q_nope, k_nope) + np.einsum("thd,sd->hts", q_pe, k_pe)
        scores = scores * scale
        causal = np.tril(np.ones((T, T), bool))
        if keep is not None:   # DeepSeek Sparse Attention: -inf outside the selection too
            causal &= keep
        scores = np.where(causal[None], scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        prob = np.exp(scores)
        prob /= prob.sum(axis=-1, keepdims=True)           # (H, T, T)
        if probs is not None:
            probs[l] = prob
        if absorbed:
            u = np.einsum("hts,sr->thr", prob, c)
            o = np.einsum("hvr,thr->thv", W_UV, u)
        else:
            v = np.einsum("hvr,sr->shv", W_UV, c)
            o = np.einsum("hts,shv->thv", prob, v)
        return o.reshape(T, H * dv) @ w[p + "o_proj.weight"].T

    def ffn(self, l: int, x: np.ndarray, group_limit: bool = True, use_bias: bool = True,
            routing: list = None) -> np.ndarray:
        cfg, w, p = self.cfg, self.w, f"model.layers.{l}.mlp."
        if not is_moe_layer(cfg, l):
            return mlp(x, w[p + "gate_proj.weight"], w[p + "up_proj.weight"], w[p + "down_proj.weight"])
        z = x @ w[p + "gate.weight"].T                     # router logits (T, E)
        bias = w.get(p + "gate.e_score_correction_bias")
        y = np.zeros_like(x)
        for t in range(x.shape[0]):
            idx, wt = route(cfg, z[t], bias, group_limit, use_bias)
            if routing is not None:
                routing.append((l, t, tuple(sorted(int(i) for i in idx)), dict(zip(map(int, idx), wt))))
            for e, we in zip(idx, wt):
                q = p + f"experts.{e}."
                y[t] += we * mlp(x[t:t + 1], w[q + "gate_proj.weight"], w[q + "up_proj.weight"],
                                 w[q + "down_proj.weight"])[0]
        if cfg.get("n_shared_experts"):
            q = p + "shared_experts."
            y += mlp(x, w[q + "gate_proj.weight"], w[q + "up_proj.weight"], w[q + "down_proj.weight"])
        return y

    def forward(self, tokens, yarn_mscale: bool = True, group_limit: bool = True,
                use_bias: bool = True, absorbed: bool = False, routing: list = None,
                attention_probs: dict = None, bf16_cache: bool = False, sparse: bool = True,
                index_rope_halves: bool = True, index_rotate: bool = False,
                index_margins: list = None) -> np.ndarray:
        """Logits (T, vocab_size) for every position. The switches are negative controls:
        yarn_mscale=False drops the mscale^2 softmax factor, group_limit=False ignores expert
        groups, use_bias=False ignores e_score_correction_bias; `routing` collects
        (layer, position, sorted expert ids, {expert: weight}), `attention_probs` {layer: (H, T, T)};
        bf16_cache rounds the latent cache.
        For V3.2 models: sparse=False runs dense MLA (the indexer ignored), index_rope_halves=False
        rotates the indexer's adjacent pairs, index_rotate=True adds the Hadamard rotation;
        `index_margins` collects selection margins (see indexer)."""
        cfg, w = self.cfg, self.w
        eps = cfg["rms_norm_eps"]
        tokens = np.asarray(tokens, dtype=np.int64)
        pos = np.arange(len(tokens), dtype=np.float64)
        x = w["model.embed_tokens.weight"][tokens]
        for l in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            xn = rmsnorm(x, w[p + "input_layernorm.weight"], eps)
            extra = {} if attention_probs is None else {"probs": attention_probs}  # subclasses may not take it
            if sparse and cfg.get("model_type") == "deepseek_v32":
                extra["keep"] = self.indexer(l, xn, pos, index_rope_halves, index_rotate, index_margins)
            x = x + self.attention(l, xn, pos, absorbed, yarn_mscale, bf16_cache, **extra)
            x = x + self.ffn(l, rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps),
                             group_limit, use_bias, routing)
        h = rmsnorm(x, w["model.norm.weight"], eps)
        return h @ w["lm_head.weight"].T

    def greedy(self, prompt, n: int, n_tokens: int = None, eos: int = None, **kw) -> list:
        """Greedy continuation of n tokens (argmax over ids < n_tokens), recomputing the prefix."""
        seq, out = list(prompt), []
        for _ in range(n):
            logits = self.forward(seq, **kw)[-1]
            if n_tokens is not None:
                logits = logits[:n_tokens]
            nxt = int(np.argmax(logits))
            out.append(nxt)
            seq.append(nxt)
            if eos is not None and nxt == eos:
                break
        return out


_CACHE = {}


def load(hf_dir: str, bf16_weights: bool = False) -> Reference:
    key = (os.path.abspath(hf_dir), bf16_weights)
    if key not in _CACHE:
        _CACHE[key] = Reference(hf_dir, bf16_weights)
    return _CACHE[key]


def reference_logits(hf_dir: str, token_ids, bf16_weights: bool = False, **kw) -> np.ndarray:
    """(T, vocab_size) float64 logits; kw: yarn_mscale, group_limit, use_bias, absorbed, routing,
    attention_probs, bf16_cache, sparse, index_rope_halves, index_rotate, index_margins."""
    return load(hf_dir, bf16_weights).forward(token_ids, **kw)


def main() -> None:
    ap = argparse.ArgumentParser(description="numpy reference forward pass")
    ap.add_argument("hf_dir")
    ap.add_argument("tokens", help="comma-separated ids")
    ap.add_argument("--dump-logits", help="write T x vocab float32 little-endian")
    a = ap.parse_args()
    toks = [int(t) for t in a.tokens.split(",")]
    logits = reference_logits(a.hf_dir, toks)
    if a.dump_logits:
        logits.astype("<f4").tofile(a.dump_logits)
    print(" ".join(str(int(i)) for i in logits.argmax(axis=1)))


if __name__ == "__main__":
    main()
